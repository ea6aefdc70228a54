"""Benefit jobs for the arq worker: reservations past their timeout are released, and the
day's one-time gifts (birthdays) are paid. Each batch is its own transaction; both are safe to
run twice (SKIP LOCKED; gift payments are idempotent by ledger key)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.auth.core import Principal, Role
from loyalty.benefits import repository, service

log = logging.getLogger("loyalty.benefits.tasks")
GIFT_ACTOR_ROLE: Role = "operator"


async def release_expired(engine: AsyncEngine, *, now: datetime, max_batches: int = 100) -> int:
    total = 0
    for _ in range(max_batches):
        async with engine.begin() as conn:
            done = await repository.release_expired(conn, now)
        total += done
        if done < 1000:
            break
    return total


async def release_expired_reservations(ctx: dict[str, Any]) -> int:
    n = await release_expired(ctx["engine"], now=datetime.now(UTC))
    if n:
        log.info("released %d benefit reservations past their timeout", n)
    return n


async def pay_gifts(engine: AsyncEngine, *, now: datetime) -> int:
    async with engine.connect() as conn:
        programmes = await repository.programmes_with_gifts(conn)
    total = 0
    for p in programmes:
        who = Principal(
            programme_id=p["id"], programme_code=p["code"], role=GIFT_ACTOR_ROLE, timezone=p["timezone"]
        )
        async with engine.begin() as conn:
            total += await service.grant_gifts(conn, who, now)
    return total


async def pay_benefit_gifts(ctx: dict[str, Any]) -> int:
    """Daily: one-time gifts (birthdays) of every programme."""
    n = await pay_gifts(ctx["engine"], now=datetime.now(UTC))
    if n:
        log.info("paid %d benefit gifts", n)
    return n
