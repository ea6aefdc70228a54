"""Benefit events into the outbox (benefit.granted, benefit.consumed), in the writer's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import distribution
from loyalty.benefits import repository
from loyalty.outbox import repository as outbox


async def emit(
    conn: AsyncConnection, programme_id: int, type_: str, subject: str, payload: dict[str, Any]
) -> None:
    """Writes the event. On Citus only when an active endpoint of the programme wants it, as the
    ledger's events and benefit_consume's are (an endpoint receives only events written after it
    was registered): without endpoints the writer stays off the coordinator's tables."""
    if distribution.Layout.citus and not await repository.event_wanted(conn, programme_id, type_):
        return
    await outbox.add(conn, programme_id, type_, subject, payload)
