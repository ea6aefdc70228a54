"""The API docs pages load everything from the service itself: no external host, so that they
render on a network without internet access; their scripts are served from the package."""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from loyalty import apidocs

REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""")


async def _page(client: AsyncTestClient[Any], path: str) -> str:
    r = await client.get(path)  # public, as the docs are: no credentials
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r.text


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_docs_pages_reference_no_external_host(client: AsyncTestClient[Any], path: str) -> None:
    page = await _page(client, path)
    assert "://" not in page, [line.strip() for line in page.splitlines() if "://" in line]
    references = [ref for ref in REFERENCE.findall(page) if ref]
    assert references and all(ref.startswith("/schema/") for ref in references), references
    scripts = [ref for ref in references if ref.endswith(".js")]
    assert scripts and all(ref.startswith(apidocs.ASSETS_PATH + "/") for ref in scripts), scripts


async def test_scalar_is_told_not_to_fetch_fonts_or_send_telemetry(client: AsyncTestClient[Any]) -> None:
    page = await _page(client, "/schema")
    assert '"withDefaultFonts":false' in page and '"telemetry":false' in page


@pytest.mark.parametrize(
    ("asset", "media_type"),
    [
        ("scalar/standalone.js", "javascript"),
        ("scalar/page.css", "text/css"),
        ("swagger/swagger-ui-bundle.js", "javascript"),
        ("swagger/swagger-ui-standalone-preset.js", "javascript"),
        ("swagger/swagger-ui.css", "text/css"),
    ],
)
async def test_assets_are_served_with_their_content_type(
    client: AsyncTestClient[Any], asset: str, media_type: str
) -> None:
    r = await client.get(f"{apidocs.ASSETS_PATH}/{asset}")
    assert r.status_code == 200
    assert media_type in r.headers["content-type"], r.headers["content-type"]
    assert r.content == (apidocs.ASSETS_DIR / asset).read_bytes()


async def test_only_the_assets_folder_is_served(client: AsyncTestClient[Any]) -> None:
    for path in ("missing.js", "../apidocs.py", "..%2Fapidocs.py", "%2e%2e/%2e%2e/app.py"):
        r = await client.get(f"{apidocs.ASSETS_PATH}/{path}")
        assert r.status_code == 404, (path, r.status_code)
