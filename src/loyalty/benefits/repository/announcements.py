"""SQL of the worker's benefit jobs: campaigns due to be announced and their benefit.granted
rows, and the programmes that have gifts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import cast as sql_cast
from sqlalchemy import func, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import rules
from loyalty.benefits.repository.tables import (
    as_json,
    campaigns,
    events,
    members,
)
from loyalty.facts.repository import fact_columns, facts_from


async def due_campaigns(conn: AsyncConnection, now: datetime, limit: int = 1000) -> list[tuple[int, int]]:
    """(programme, campaign) of campaigns started and not announced yet whose benefit is giving
    now, or that have ended (to be marked without events); oldest start first."""
    rows = await conn.execute(
        text(
            "SELECT c.programme_id, c.id FROM benefit_campaigns c "
            "JOIN benefits b ON b.programme_id = c.programme_id AND b.id = c.benefit_id "
            "WHERE c.announced_at IS NULL AND c.starts_at <= :now "
            "AND (c.ends_at <= :now OR (b.active AND (b.valid_from IS NULL OR b.valid_from <= :now))) "
            "ORDER BY c.starts_at, c.programme_id, c.id LIMIT :limit"
        ),
        {"now": now, "limit": limit},
    )
    return [(int(p), int(c)) for p, c in rows]


async def claim_campaign(
    conn: AsyncConnection, programme_id: int, campaign_id: int, now: datetime
) -> dict[str, Any] | None:
    """The campaign with its benefit, locked, if it has started and is still not announced; None
    if another run holds it (SKIP LOCKED) or announced it meanwhile. Its segment's rule is None
    when the segment is gone."""
    row = (
        await conn.execute(
            text(
                "SELECT c.code, c.params, c.ends_at, s.rule, b.id, b.code AS benefit, b.type, "
                "b.params AS benefit_params, b.channels, b.valid_from, b.valid_until, b.active "
                "FROM benefit_campaigns c "
                "JOIN benefits b ON b.programme_id = c.programme_id AND b.id = c.benefit_id "
                "LEFT JOIN segments s ON s.programme_id = c.programme_id AND s.code = c.segment "
                "WHERE c.programme_id = :p AND c.id = :c AND c.announced_at IS NULL AND c.starts_at <= :now "
                "FOR UPDATE OF c SKIP LOCKED"
            ),
            {"p": programme_id, "c": campaign_id, "now": now},
        )
    ).first()
    return dict(row._mapping) if row else None


async def mark_announced(conn: AsyncConnection, programme_id: int, campaign_id: int, now: datetime) -> None:
    await conn.execute(
        update(campaigns)
        .where(campaigns.c.programme_id == programme_id, campaigns.c.id == campaign_id)
        .values(announced_at=now)
    )


async def announce_campaign(
    conn: AsyncConnection, programme_id: int, rule: rules.Rule, payload: dict[str, Any], now: datetime
) -> int:
    """benefit.granted for every active member the segment's rule selects now, in one
    INSERT ... SELECT (the rule compiled to SQL as segments count their members); ``payload``
    is what every event carries besides the member's id. Written only when an active endpoint
    of the programme subscribes to benefit.granted (or '*'), like the tier trigger's events."""
    subscribed = text(
        "EXISTS (SELECT 1 FROM webhook_endpoints ep WHERE ep.programme_id = :p AND ep.active "
        "AND ('benefit.granted' = ANY (ep.event_types) OR '*' = ANY (ep.event_types)))"
    ).bindparams(p=programme_id)
    body = func.jsonb_build_object("member_id", members.c.external_id).op("||")(
        sql_cast(literal(as_json(payload)), JSONB)
    )
    rows = (
        select(
            literal(programme_id),
            literal("benefit.granted"),
            literal("member:") + members.c.external_id,
            body,
        )
        .select_from(facts_from())
        .where(
            members.c.programme_id == programme_id,
            members.c.status == "active",
            rules.to_sql(rule, fact_columns(now)),
            subscribed,
        )
        .order_by(members.c.id)
    )
    result = await conn.execute(
        insert(events).from_select(["programme_id", "type", "subject", "payload"], rows)
    )
    return int(result.rowcount or 0)


async def programmes_with_gifts(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT DISTINCT p.id, p.code, p.timezone FROM programmes p "
            "JOIN benefits b ON b.programme_id = p.id AND b.type = 'gift' AND b.active ORDER BY p.id"
        )
    )
    return [dict(r._mapping) for r in rows]
