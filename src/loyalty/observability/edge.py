"""The outermost ASGI layer: a request id for every request, its metrics, and ``/metrics``.

It wraps Litestar's whole handler (routing and the exception handler included), so it sees
every answer: the fast lanes', 404s, and errors turned into problems. The route template is
what Litestar's router left in the scope (``path_template``); nothing is parsed here.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from typing import Any

from loyalty.observability import logs, metrics

METRICS_PATH = "/metrics"
_PROBLEM = b"application/problem+json"
access_log = logging.getLogger("loyalty.access")


class Edge:
    def __init__(self, app: Any, *, metrics_token: str | None, access_log: bool = False) -> None:
        self.app = app
        self.metrics_token = metrics_token
        self.access_log = access_log
        self.database_gauges = metrics.DatabaseGauges()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid_raw = None
        for name, value in scope["headers"]:
            if name == logs.REQUEST_ID_HEADER:
                rid_raw = value
                break
        rid = logs.accept_request_id(rid_raw)
        rid_header = (logs.REQUEST_ID_HEADER, rid.encode("ascii"))
        token = logs.request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        try:
            if scope["path"] == METRICS_PATH:
                await self._metrics(scope, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or metrics.UNMATCHED_ROUTE
            metrics.http_observer(route, scope["method"], status).observe(elapsed)
            if self.access_log:
                access_log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            logs.request_id.reset(token)

    async def _metrics(self, scope: Any, send: Any) -> None:
        scope["path_template"] = METRICS_PATH
        if not self._may_scrape(scope):
            body = (
                b'{"type":"about:blank","title":"Unauthorized","status":401,"code":"metrics_unauthorized",'
                b'"detail":"/metrics needs the metrics bearer token (LOYALTY_METRICS_TOKEN)."}'
            )
            await _answer(send, 401, _PROBLEM, body, [(b"www-authenticate", b"Bearer")])
            return
        state = scope["litestar_app"].state if "litestar_app" in scope else None
        body = await metrics.render(state, self.database_gauges)
        await _answer(send, 200, metrics.CONTENT_TYPE.encode(), body)

    def _may_scrape(self, scope: Any) -> bool:
        """With a token set, only its bearer; without one, only a client on this machine."""
        if self.metrics_token is None:
            client = scope.get("client")
            if not client:
                return True  # an in-process test client
            try:
                return ipaddress.ip_address(client[0]).is_loopback
            except ValueError:
                return client[0] == "testclient"
        expected = b"bearer " + self.metrics_token.encode()
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value[:7].lower() + value[7:], expected)
        return False


async def _answer(
    send: Any, status: int, content_type: bytes, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def install(app: Any, *, metrics_token: str | None, access_log: bool = False) -> None:
    """Wrap the Litestar app's ASGI handler (inside Litestar's own scope set-up, outside its
    router, exception handler and any app-level CORS layer)."""
    app.asgi_handler = Edge(app.asgi_handler, metrics_token=metrics_token, access_log=access_log)
