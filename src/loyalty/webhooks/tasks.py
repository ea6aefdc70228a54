"""Webhook jobs for the arq worker: deliver due deliveries, announce expiring lots.

Delivery is at-least-once: a delivery is leased and committed before the POST, and its
outcome is written after; a worker that dies in between leaves a lease that runs out, and the
next run sends it again with the same webhook-id (receivers dedupe by it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.webhooks import core, repository, service, targets

log = logging.getLogger("loyalty.webhooks.tasks")
BATCH = 100
# Longer than an attempt can take (the client's timeouts), so a live attempt keeps its lease.
LEASE_SECONDS = 60
ROUND_BUDGET_SECONDS = 4.0


async def deliver_webhooks(ctx: dict[str, Any], *, budget_seconds: float = ROUND_BUDGET_SECONDS) -> int:
    """Claims and sends due deliveries in rounds until none is due or the time budget is spent.

    Every connection goes through the webhook target policy: ``ctx["webhook_policy"]``, else
    the one of ``ctx["settings"]``, else public targets only.
    """
    engine: AsyncEngine = ctx["engine"]
    client: httpx.AsyncClient | None = ctx.get("webhook_client")
    own_client = client is None
    if client is None:
        policy = ctx.get("webhook_policy") or targets.TargetPolicy.from_settings(ctx.get("settings"))
        client = targets.delivery_client(policy, service.TIMEOUT)
    sent = 0
    deadline = time.monotonic() + budget_seconds
    try:
        while True:
            n = await deliver_round(engine, client)
            sent += n
            if n == 0 or time.monotonic() > deadline:
                break
    finally:
        if own_client:
            await client.aclose()
    if sent:
        log.info("attempted %d webhook deliveries", sent)
    return sent


async def deliver_round(engine: AsyncEngine, client: httpx.AsyncClient, limit: int = BATCH) -> int:
    async with engine.begin() as conn:
        claimed = await repository.claim_due(conn, limit=limit, lease_seconds=LEASE_SECONDS)
    if not claimed:
        return 0
    # The claim keeps at most one delivery per (endpoint, subject), so sending them concurrently
    # cannot reorder a member's events.
    outcomes = await asyncio.gather(*(_attempt(client, row) for row in claimed))
    async with engine.begin() as conn:
        for row, (status_code, error) in zip(claimed, outcomes, strict=True):
            await _record(conn, row, status_code, error)
    return len(claimed)


async def _attempt(client: httpx.AsyncClient, row: dict[str, Any]) -> tuple[int | None, str | None]:
    message = core.sign(
        secret=row["secret"],
        msg_id=core.message_id(row["programme_id"], row["event_id"]),
        event_type=row["type"],
        occurred_at=row["created_at"],
        data=row["payload"],
        now=datetime.now(UTC),
    )
    return await service.send(client, row["url"], message)


async def _record(conn: Any, row: dict[str, Any], status_code: int | None, error: str | None) -> None:
    next_at = None
    if status_code is not None and core.succeeded(status_code):
        status = "succeeded"
    else:
        delay = core.retry_delay(row["attempts"])
        status = "failed" if delay is not None else "dead"
        next_at = datetime.now(UTC) + delay if delay is not None else None
    kept = await repository.record_outcome(
        conn,
        programme_id=row["programme_id"],
        delivery_id=row["id"],
        attempts=row["attempts"],
        status=status,
        status_code=status_code,
        error=error,
        next_attempt_at=next_at,
        member_id=row.get("member_id"),
    )
    if not kept:
        log.warning("delivery %s: lease lost before its outcome was written", row["id"])


async def notify_expiring_soon(ctx: dict[str, Any]) -> int:
    """Daily: points.expiring_soon for lots entering their programme's notice period, once per lot."""
    total = 0
    for _ in range(1000):
        async with ctx["engine"].begin() as conn:
            done = await repository.notify_expiring_lots(conn, 1000)
        total += done
        if done == 0:
            break
    if total:
        log.info("announced %d expiring lots", total)
    return total


# The delivery log and the outbox keep 30 days, like idempotency keys: long enough to look into
# a receiver's complaint and redeliver; after that they only grow the tables.
HISTORY_RETENTION_DAYS = 30
PURGE_BATCH = 5000


async def purge_webhook_history(ctx: dict[str, Any]) -> int:
    """Daily: finished deliveries, then the events nothing refers to any more, past the
    retention, in bounded batches (each its own transaction)."""
    engine: AsyncEngine = ctx["engine"]
    total = 0
    for purge in (repository.purge_finished_deliveries, repository.purge_undeliverable_events):
        for _ in range(1000):
            async with engine.begin() as conn:
                done = await purge(conn, HISTORY_RETENTION_DAYS, PURGE_BATCH)
            total += done
            if done < PURGE_BATCH:
                break
    if total:
        log.info("purged %d finished deliveries and outbox events", total)
    return total
