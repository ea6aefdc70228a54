"""All SQL of segments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import rules
from loyalty.errors import Conflict
from loyalty.facts.repository import fact_columns, facts_from
from loyalty.members.models import Member
from loyalty.segments.models import Segment

segments = cast(Table, Segment.__table__)
members = cast(Table, Member.__table__)
_COLUMNS = (
    segments.c.code,
    segments.c.name,
    segments.c.description,
    segments.c.rule,
    segments.c.created_at,
    segments.c.updated_at,
)


async def create(conn: AsyncConnection, programme_id: int, values: dict[str, Any]) -> dict[str, Any]:
    try:
        async with conn.begin_nested():
            row = (
                await conn.execute(
                    insert(segments).values(programme_id=programme_id, **values).returning(*_COLUMNS)
                )
            ).one()
    except IntegrityError:
        raise Conflict(
            "A segment with this code exists.", code="segment_exists", extra={"code": values["code"]}
        ) from None
    return dict(row._mapping)


async def get(conn: AsyncConnection, programme_id: int, code: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(*_COLUMNS).where(segments.c.programme_id == programme_id, segments.c.code == code)
        )
    ).first()
    return dict(row._mapping) if row else None


async def all_(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(*_COLUMNS).where(segments.c.programme_id == programme_id).order_by(segments.c.code)
    )
    return [dict(r._mapping) for r in rows]


async def update_(
    conn: AsyncConnection, programme_id: int, code: str, values: dict[str, Any]
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            update(segments)
            .where(segments.c.programme_id == programme_id, segments.c.code == code)
            .values(**values, updated_at=func.now())
            .returning(*_COLUMNS)
        )
    ).first()
    return dict(row._mapping) if row else None


async def delete_(conn: AsyncConnection, programme_id: int, code: str) -> bool:
    result = await conn.execute(
        delete(segments).where(segments.c.programme_id == programme_id, segments.c.code == code)
    )
    return bool(result.rowcount)


async def member_page(
    conn: AsyncConnection, programme_id: int, rule: rules.Rule, now: datetime, after: str | None, limit: int
) -> list[str]:
    """External ids of the members the rule selects, in order, after the cursor (keyset)."""
    stmt = (
        select(members.c.external_id)
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id, rules.to_sql(rule, fact_columns(now)))
        .order_by(members.c.external_id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(members.c.external_id > after)
    return list((await conn.execute(stmt)).scalars())


async def stream_members(
    conn: AsyncConnection, programme_id: int, rule: rules.Rule, now: datetime, chunk: int
) -> AsyncIterator[list[str]]:
    """External ids of every member the rule selects, in order, through a server-side cursor:
    ``chunk`` at a time, however large the segment, all from one snapshot. Opens the
    connection's transaction: call it first."""
    await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    stmt = (
        select(members.c.external_id)
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id, rules.to_sql(rule, fact_columns(now)))
        .order_by(members.c.external_id)
    )
    result = await conn.stream(stmt.execution_options(yield_per=chunk))
    async for part in result.partitions(chunk):
        yield [row[0] for row in part]


async def count(conn: AsyncConnection, programme_id: int, rule: rules.Rule, now: datetime) -> int:
    stmt = (
        select(func.count())
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id, rules.to_sql(rule, fact_columns(now)))
    )
    return int(await conn.scalar(stmt) or 0)


async def member_id(conn: AsyncConnection, programme_id: int, external_id: str) -> int | None:
    return await conn.scalar(
        select(members.c.id).where(
            members.c.programme_id == programme_id, members.c.external_id == external_id
        )
    )
