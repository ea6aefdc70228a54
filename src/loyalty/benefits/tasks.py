"""Benefit jobs for the arq worker: reservations past their timeout are released, the day's
one-time gifts (birthdays) are paid, and campaigns that started are announced (benefit.granted
to their segment's members). Each batch or campaign is its own transaction; all are safe to
run twice (SKIP LOCKED; gift payments are idempotent by ledger key; a campaign is marked
announced in the transaction of its events)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.benefits import repository, service
from loyalty.http.principal import Principal, Role

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


async def announce_campaigns(engine: AsyncEngine, *, now: datetime) -> tuple[int, int]:
    """(campaigns announced, benefit.granted events written), a campaign per transaction."""
    async with engine.connect() as conn:
        due = await repository.due_campaigns(conn, now)
    announced = written = 0
    for programme_id, campaign_id in due:
        async with engine.begin() as conn:
            n = await service.announce_campaign(conn, programme_id, campaign_id, now)
        if n is not None:
            announced += 1
            written += n
    return announced, written


async def announce_benefit_campaigns(ctx: dict[str, Any]) -> int:
    """Every minute: benefit.granted for the members of campaigns that have started."""
    announced, written = await announce_campaigns(ctx["engine"], now=datetime.now(UTC))
    if announced:
        log.info("announced %d benefit campaigns: %d benefit.granted events", announced, written)
    return announced
