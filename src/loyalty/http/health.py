"""Liveness and readiness. Live is free (no I/O); ready asks each backing service, at once,
and names each one's state, so an operator sees which of PostgreSQL and Redis is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request, Response, get
from sqlalchemy import text

from loyalty.http.problems import RETRY_AFTER_SECONDS, problem

CHECK_TIMEOUT_SECONDS = 2.0


@get("/health/live", tags=["health"], exclude_from_auth=True)
async def live() -> dict[str, str]:
    return {"status": "ok"}


async def _probe(check: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check()
    except Exception as exc:  # noqa: BLE001 - any failure means this service is not ready
        reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return {"state": "down", "error": reason}
    return {"state": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


@get("/health/ready", tags=["health"], exclude_from_auth=True)
async def ready(request: Request) -> Response:
    state = request.app.state

    async def postgresql() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await state.redis.ping()

    pg, rd = await asyncio.gather(_probe(postgresql), _probe(redis))
    services = {"postgresql": pg, "redis": rd}
    checks = {name: "ok" if s["state"] == "up" else f"error: {s['error']}" for name, s in services.items()}
    if all(s["state"] == "up" for s in services.values()):
        return Response({"status": "ok", "services": services, "checks": checks})
    down = sorted(name for name, s in services.items() if s["state"] != "up")
    return problem(
        503,
        "not_ready",
        f"A backing service does not answer: {', '.join(down)}.",
        request,
        {"services": services, "checks": checks},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
