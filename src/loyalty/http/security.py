"""Response hardening and CORS, as one ASGI wrapper around the whole application.

It sits outside Litestar's router and exception handling, so 404s, problem answers and the
lean posting lanes get the same headers as every route, and a CORS preflight is answered
before authentication. The header lists are built once; a response costs a list copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from litestar import Litestar

    from loyalty.settings import Settings

# What a customer's app in a browser sends and must be able to read.
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_REQUEST_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
CORS_EXPOSED_HEADERS = "Idempotent-Replayed, Retry-After, X-Request-ID"
CORS_MAX_AGE = "600"
# The API answers JSON only: nothing in a response may load, run or be framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The docs pages are HTML with scripts and styles of their own origin.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
)
DOCS_PREFIX = "/schema"
# The console: its own scripts only (no inline script), inline styles (ECharts sets them on its
# elements), forms posting to itself.
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CONSOLE_PREFIX = "/console"
HSTS = "max-age=31536000; includeSubDomains"

Headers = list[tuple[bytes, bytes]]


def response_headers(*, https: bool, docs: bool, console: bool = False) -> Headers:
    """The headers added to every response (cache-control is added separately, if absent)."""
    csp = CONSOLE_CSP if console else DOCS_CSP if docs else API_CSP
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        # The console keeps its own origin in the Referer (its links and htmx requests).
        (b"referrer-policy", b"same-origin" if console else b"no-referrer"),
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"content-security-policy", csp.encode()),
    ]
    if https:
        headers.append((b"strict-transport-security", HSTS.encode()))
    return headers


def normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class CorsPolicy:
    """Origins allowed to call the API from a browser; '*' allows any."""

    def __init__(self, origins: Iterable[str]) -> None:
        normalised = {normalise_origin(o) for o in origins if o.strip()}
        self.any = "*" in normalised
        self.origins = frozenset(o.encode() for o in normalised - {"*"})

    def allows(self, origin: bytes) -> bool:
        return self.any or origin.lower() in self.origins

    def response_headers(self, origin: bytes) -> Headers:
        return [
            (b"access-control-allow-origin", b"*" if self.any else origin),
            (b"access-control-expose-headers", CORS_EXPOSED_HEADERS.encode()),
        ]

    def preflight_headers(self, origin: bytes) -> Headers:
        return [
            (b"access-control-allow-origin", b"*" if self.any else origin),
            (b"access-control-allow-methods", CORS_METHODS.encode()),
            (b"access-control-allow-headers", CORS_REQUEST_HEADERS.encode()),
            (b"access-control-max-age", CORS_MAX_AGE.encode()),
        ]


class SecurityHeaders:
    """ASGI wrapper: security headers on every HTTP response, and CORS when configured."""

    def __init__(self, app: Any, *, https: bool, cors_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.cors = CorsPolicy(cors_origins)
        self.cors_on = bool(self.cors.any or self.cors.origins)
        vary = [(b"vary", b"Origin")] if self.cors_on else []
        self.api = [*response_headers(https=https, docs=False), *vary]
        self.docs = [*response_headers(https=https, docs=True), *vary]
        self.console = [*response_headers(https=https, docs=False, console=True), *vary]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        extra = (
            self.docs
            if path.startswith(DOCS_PREFIX)
            else self.console
            if path.startswith(CONSOLE_PREFIX)
            else self.api
        )
        if self.cors_on:
            origin = _header(scope["headers"], b"origin")
            if origin is not None:
                if scope["method"] == "OPTIONS" and _header(
                    scope["headers"], b"access-control-request-method"
                ):
                    await self._preflight(send, origin, extra)
                    return
                if self.cors.allows(origin):
                    extra = [*extra, *self.cors.response_headers(origin)]

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                headers.extend(extra)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _preflight(self, send: Any, origin: bytes, extra: Headers) -> None:
        if self.cors.allows(origin):
            head = [
                *self.cors.preflight_headers(origin),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": [*head, *extra]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = msgspec.json.encode(
            {
                "type": "https://loyalty.invalid/problems/cors_origin_not_allowed",
                "title": "Forbidden",
                "status": 403,
                "code": "cors_origin_not_allowed",
                "detail": "This origin may not call the API from a browser (see LOYALTY_CORS_ORIGINS).",
                "origin": origin.decode("latin-1"),
            }
        )
        head = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 403, "headers": [*head, *extra]})
        await send({"type": "http.response.body", "body": body})


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def install(app: Litestar, settings: Settings) -> None:
    """Wrap the application's outermost ASGI handler (outside routing and error handling)."""
    app.asgi_handler = SecurityHeaders(
        app.asgi_handler, https=settings.https, cors_origins=settings.cors_origins
    )
