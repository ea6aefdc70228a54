"""Benefit events into the outbox (benefit.granted, benefit.consumed), in the writer's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.outbox import repository as outbox


async def emit(
    conn: AsyncConnection, programme_id: int, type_: str, subject: str, payload: dict[str, Any]
) -> None:
    """Writes the event; on Citus only when an active endpoint of the programme wants it, as the
    ledger's events and benefit_consume's are: without endpoints the writer stays on its shard."""
    await outbox.add_if_wanted(conn, programme_id, type_, subject, payload)
