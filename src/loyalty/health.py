"""Liveness and readiness: ready means PostgreSQL and Redis both answer."""

from __future__ import annotations

import asyncio

from litestar import Request, Response, get
from sqlalchemy import text

from loyalty.problems import problem


@get("/health/live", tags=["health"], exclude_from_auth=True)
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", tags=["health"], exclude_from_auth=True)
async def ready(request: Request) -> Response:
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["postgresql"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["postgresql"] = f"error: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            await state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return Response({"status": "ok", "checks": checks})
    return problem(503, "not_ready", "A backing service does not answer.", request, {"checks": checks})
