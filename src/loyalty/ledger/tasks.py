"""Ledger jobs for the arq worker. Each works in bounded batches, one transaction per batch, and
is safe to run twice or on several workers at once (the SQL skips or re-checks what is done)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import distribution
from loyalty.ledger import repository

log = logging.getLogger("loyalty.ledger.tasks")
BATCH = 500


async def _drain(engine: AsyncEngine, function: str, job: str, max_batches: int = 200) -> int:
    async with engine.connect() as conn:
        citus = await distribution.on_citus(conn)
    if citus:
        return await _drain_by_member(engine, job, max_batches)
    total = 0
    for _ in range(max_batches):
        async with engine.begin() as conn:
            done = await repository.run_job(conn, function, BATCH)
        total += done
        # The jobs count members (or holds) while their LIMIT counts rows, so only an empty
        # round says that nothing is due any more.
        if done == 0:
            break
    return total


async def _drain_by_member(engine: AsyncEngine, job: str, max_batches: int) -> int:
    """The Citus form: what is due is listed across shards without locks, then each member gets
    a transaction of its own on its node (a multi-shard FOR UPDATE is refused there, and one
    transaction over many members would be a distributed one). An item done meanwhile by
    another worker or an API call is re-checked under its lock and counts 0."""
    total = 0
    for _ in range(max_batches):
        async with engine.connect() as conn:
            due = await repository.due_for_job(conn, job, BATCH)
        done = 0
        for item in due:
            async with engine.begin() as conn:
                done += await repository.run_member_job(conn, job, item)
        total += done
        # A round in which nothing was left to do (others did it, or nothing is due) ends it.
        if done == 0:
            break
    return total


async def expire_holds(ctx: dict[str, Any]) -> int:
    """Void holds whose timeout has passed: their points go back to the members."""
    n = await _drain(ctx["engine"], "ledger_expire_holds", "holds")
    if n:
        log.info("voided %d timed-out holds", n)
    return n


async def vest_points(ctx: dict[str, Any]) -> int:
    """Pending points whose return window has closed become available."""
    n = await _drain(ctx["engine"], "ledger_vest_due", "vest")
    if n:
        log.info("vested pending points of %d members", n)
    return n


async def expire_points(ctx: dict[str, Any]) -> int:
    """Lots past their expiry go to the breakage account."""
    n = await _drain(ctx["engine"], "ledger_expire_due", "expire")
    if n:
        log.info("expired points of %d members", n)
    return n


async def budget_alerts(ctx: dict[str, Any]) -> int:
    """Record budget.threshold_reached for each alert threshold a budget has newly crossed."""
    async with ctx["engine"].begin() as conn:
        n = await repository.run_job(conn, "ledger_budget_alerts", 0)
    if n:
        log.info("recorded %d budget threshold alerts", n)
    return n


IDEMPOTENCY_KEY_RETENTION_DAYS = 30


async def purge_idempotency_keys(ctx: dict[str, Any]) -> int:
    """Forget idempotency keys older than the retention period, in bounded batches.

    A client retries within minutes or hours; after 30 days a reused key is a new request."""
    async with ctx["engine"].connect() as conn:
        citus = await distribution.on_citus(conn)
    total = 0
    for _ in range(1000):
        async with ctx["engine"].begin() as conn:
            done = await repository.purge_idempotency_keys(
                conn, IDEMPOTENCY_KEY_RETENTION_DAYS, 5000, citus=citus
            )
        total += done
        if done == 0:
            break
    if total:
        log.info("purged %d idempotency keys", total)
    return total
