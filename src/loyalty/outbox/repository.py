"""Writes to the outbox: one domain event, in the caller's transaction (its cause's)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.outbox.models import DomainEvent

events = cast(Table, DomainEvent.__table__)


async def add(
    conn: AsyncConnection, programme_id: int, type_: str, subject: str, payload: dict[str, Any]
) -> None:
    await conn.execute(
        insert(events).values(programme_id=programme_id, type=type_, subject=subject, payload=payload)
    )
