"""The API docs pages (/schema with Scalar, /schema/swagger with Swagger UI) served with their
scripts from the package itself, so that they render on a network without internet access.
The files are the npm registry's, unmodified (static/docs/VERSIONS)."""

from __future__ import annotations

from pathlib import Path

from litestar.openapi.plugins import OpenAPIRenderPlugin, ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

ASSETS_PATH = "/schema/assets"  # under /schema: public, as the docs pages are
ASSETS_DIR = Path(__file__).parent / "static" / "docs"
# Scalar would load its fonts from its own CDN and send usage telemetry: neither, here.
SCALAR_OPTIONS = {"withDefaultFonts": False, "telemetry": False}


def render_plugins() -> list[OpenAPIRenderPlugin]:
    return [
        ScalarRenderPlugin(
            js_url=f"{ASSETS_PATH}/scalar/standalone.js",
            css_url=f"{ASSETS_PATH}/scalar/page.css",
            options=SCALAR_OPTIONS,
            favicon="",
        ),
        SwaggerRenderPlugin(
            path="/swagger",
            js_url=f"{ASSETS_PATH}/swagger/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger/swagger-ui-standalone-preset.js",
            favicon="",
        ),
    ]


def assets_router() -> Router:
    return create_static_files_router(
        path=ASSETS_PATH, directories=[ASSETS_DIR], include_in_schema=False, name="docs-assets"
    )
