"""Report jobs for the arq worker: the rollup (every 10 s) and the expiry forecast (every
10 min). Each step is its own transaction with the watermark it moves, so a crash loses
nothing and a second run counts nothing twice."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.reports import service

log = logging.getLogger("loyalty.reports.tasks")


async def rollup(engine: AsyncEngine, max_steps: int = 1_000, margin_seconds: float = 1.0) -> tuple[int, int]:
    """Runs rollup steps until caught up; returns (transactions, deltas) rolled up."""
    transactions = deltas = 0
    for _ in range(max_steps):
        async with engine.begin() as conn:
            result, done = await service.rollup_step(conn, margin_seconds)
        transactions += result.transactions
        deltas += result.deltas
        if done:
            break
    return transactions, deltas


async def rollup_reports(ctx: dict[str, Any]) -> int:
    """Adds the ledger rows committed since the last run to the dashboard's rollups."""
    transactions, deltas = await rollup(ctx["engine"])
    if transactions or deltas:
        log.info("rolled up %d transactions and %d member/tier deltas", transactions, deltas)
    return transactions


async def refresh_expiry_forecast(ctx: dict[str, Any]) -> int:
    """Recomputes the points due to expire per month over the next 12 months."""
    async with ctx["engine"].begin() as conn:
        return await service.refresh_forecast(conn)
