"""SQL of consumptions: the benefit_consume call (consume, reserve), and commit, release and
the timeout of reservations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import asyncpg
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import distribution
from loyalty.benefits.repository.tables import (
    consumptions,
)

# One use of a benefit, decided and written by one call of benefit_consume
# (sql/benefit_consume_v1.sql): the answer is its JSON text. On Citus the call names its
# member's key (the eleventh argument), by which Citus delegates it to the member's node.
CONSUME_SQL = "SELECT benefit_consume($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
CONSUME_ROUTED_SQL = "SELECT benefit_consume($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
_NAMES = ("p", "code", "member", "order", "channel", "reserve", "expires_at", "now", "tz", "segments", "key")
_CONSUME_TEXT = text(
    "SELECT benefit_consume(:p, :code, :member, :order, :channel, :reserve, :expires_at, :now, :tz, :segments)"
)
_CONSUME_ROUTED_TEXT = text(
    "SELECT benefit_consume(:p, :code, :member, :order, :channel, :reserve, :expires_at, :now, :tz, :segments,"
    " :key)"
)


@dataclass(frozen=True, slots=True)
class ConsumeCall:
    """The arguments of one benefit_consume call; ``segments`` is how the caller evaluated the
    running campaigns' rules (None until the function asked for it)."""

    programme_id: int
    code: str
    member: str
    order_reference: str
    channel: str | None
    reserve: bool
    expires_at: datetime | None
    now: datetime
    timezone: str
    segments: str | None = None

    def args(self) -> tuple[Any, ...]:
        return (
            self.programme_id,
            self.code,
            self.member,
            self.order_reference,
            self.channel,
            self.reserve,
            self.expires_at,
            self.now,
            self.timezone,
            self.segments,
        )

    def routed_args(self) -> tuple[Any, ...]:
        """The arguments with the member's key, for Citus."""
        return (*self.args(), distribution.member_key(self.programme_id, self.member))


async def consume_pooled(conn: asyncpg.Connection, call: ConsumeCall) -> str:
    """benefit_consume on a pooled asyncpg connection: the statement is its own transaction
    (on Citus, delegated whole to the member's node)."""
    if distribution.Layout.citus:
        return cast(str, await conn.fetchval(CONSUME_ROUTED_SQL, *call.routed_args()))
    return cast(str, await conn.fetchval(CONSUME_SQL, *call.args()))


async def consume_in(conn: AsyncConnection, call: ConsumeCall) -> str:
    """benefit_consume in the caller's SQLAlchemy transaction (its locks last until it ends)."""
    if distribution.Layout.citus:
        routed = dict(zip(_NAMES, call.routed_args(), strict=True))
        return cast(str, await conn.scalar(_CONSUME_ROUTED_TEXT, routed))
    return cast(str, await conn.scalar(_CONSUME_TEXT, dict(zip(_NAMES[:-1], call.args(), strict=True))))


async def consumption(
    conn: AsyncConnection,
    programme_id: int,
    benefit_id: int,
    order_reference: str,
    *,
    lock: bool = False,
    member_id: int | None = None,
) -> dict[str, Any] | None:
    """The consumption of an order; with ``member_id``, only that member's (on Citus, read on
    the member's shard alone; without it, every shard is asked)."""
    stmt = select(
        consumptions.c.id,
        consumptions.c.member_id,
        consumptions.c.state,
        consumptions.c.period_start,
        consumptions.c.expires_at,
    ).where(
        consumptions.c.programme_id == programme_id,
        consumptions.c.benefit_id == benefit_id,
        consumptions.c.order_reference == order_reference,
    )
    if member_id is not None:
        stmt = stmt.where(consumptions.c.member_id == member_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return dict(row._mapping) if row else None


async def move_use(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    benefit_id: int,
    period_start: date,
    *,
    used: int,
    reserved: int,
) -> int:
    """Adds the deltas to the usage row (commit: reserved -1, used +1; release: -1)."""
    value = await conn.scalar(
        text(
            "UPDATE benefit_usage SET used = used + :du, reserved = reserved + :dr "
            "WHERE programme_id = :p AND member_id = :m AND benefit_id = :b AND period_start = :s "
            "RETURNING used + reserved"
        ),
        {"p": programme_id, "m": member_id, "b": benefit_id, "s": period_start, "du": used, "dr": reserved},
    )
    return int(value or 0)


async def set_consumption_state(
    conn: AsyncConnection, programme_id: int, member_id: int, consumption_id: int, state: str
) -> None:
    await conn.execute(
        update(consumptions)
        .where(
            consumptions.c.programme_id == programme_id,
            consumptions.c.member_id == member_id,
            consumptions.c.id == consumption_id,
        )
        .values(state=state, updated_at=func.now())
    )


async def route_to_member(conn: AsyncConnection, member_key: int) -> None:
    """Citus only: rows written with DEFAULT ledger_owner() in this transaction are the member's."""
    await conn.execute(text("SELECT set_config('loyalty.owner', :k, true)"), {"k": str(member_key)})


_RELEASE_DUE = """
            WITH due AS (
                SELECT programme_id, id FROM benefit_consumptions
                WHERE state = 'reserved' AND expires_at < :now{member}
                ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
            ), released AS (
                UPDATE benefit_consumptions c SET state = 'released', updated_at = now()
                FROM due WHERE c.programme_id = due.programme_id AND c.id = due.id{c}
                RETURNING c.programme_id, c.member_id, c.benefit_id, c.period_start
            ), per_row AS (
                SELECT programme_id, member_id, benefit_id, period_start, count(*) AS n
                FROM released WHERE period_start IS NOT NULL GROUP BY 1, 2, 3, 4
            ), moved AS (
                UPDATE benefit_usage u SET reserved = u.reserved - per_row.n FROM per_row
                WHERE u.programme_id = per_row.programme_id AND u.member_id = per_row.member_id
                  AND u.benefit_id = per_row.benefit_id AND u.period_start = per_row.period_start{u}
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM moved)
            """
_RELEASE = text(_RELEASE_DUE.format(member="", c="", u=""))
# Citus locks rows of one shard at a time: the same statement for one member's due rows.
_RELEASE_MEMBER = text(
    _RELEASE_DUE.format(member=" AND member_id = :m", c=" AND c.member_id = :m", u=" AND u.member_id = :m")
)
_DUE_MEMBERS = text(
    "SELECT member_id FROM benefit_consumptions WHERE state = 'reserved' AND expires_at < :now"
    " GROUP BY member_id ORDER BY min(expires_at) LIMIT :limit"
)


async def release_expired(conn: AsyncConnection, now: datetime, limit: int = 1000) -> int:
    """Releases reservations past their timeout, a batch at a time, in one statement (on Citus,
    one statement per member that has some: the members are found on every shard first)."""
    if not distribution.Layout.citus:
        return int((await conn.execute(_RELEASE, {"now": now, "limit": limit})).one()[0])
    released = 0
    for (member_id,) in (await conn.execute(_DUE_MEMBERS, {"now": now, "limit": limit})).all():
        params = {"now": now, "limit": limit - released, "m": member_id}
        released += int((await conn.execute(_RELEASE_MEMBER, params)).one()[0])
        if released >= limit:
            break
    return released
