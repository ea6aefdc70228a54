"""Writes to the outbox: one domain event, in the caller's transaction (its cause's)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import distribution
from loyalty.outbox.models import DomainEvent

events = cast(Table, DomainEvent.__table__)


async def add(
    conn: AsyncConnection, programme_id: int, type_: str, subject: str, payload: dict[str, Any]
) -> None:
    await conn.execute(
        insert(events).values(programme_id=programme_id, type=type_, subject=subject, payload=payload)
    )


async def wanted(conn: AsyncConnection, programme_id: int, type_: str) -> bool:
    """Whether an active webhook endpoint of the programme subscribes to ``type_``.

    On Citus the writers that run in the API add an event only then (an endpoint receives only
    events written after it was registered), so that a write without subscribers stays on its
    member's shard; ``webhook_endpoints`` is replicated to every node there.
    """
    query = text(
        "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE active AND programme_id = :p "
        "AND ('*' = ANY (event_types) OR :t = ANY (event_types)))"
    )
    return bool(await conn.scalar(query, {"p": programme_id, "t": type_}))


async def add_if_wanted(
    conn: AsyncConnection, programme_id: int, type_: str, subject: str, payload: dict[str, Any]
) -> None:
    """``add``; on Citus only when an active endpoint wants the event (see ``wanted``)."""
    if distribution.Layout.citus and not await wanted(conn, programme_id, type_):
        return
    await add(conn, programme_id, type_, subject, payload)
