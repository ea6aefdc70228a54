"""SQL of a member's sources: the member, their tier as the tier engine reads it, the ladder
in force, grants and running campaigns, and quota usage per period."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import distribution
from loyalty.benefits.repository.tables import (
    grants,
    member_tiers,
    members,
    tier_benefits,
    usage,
)


async def member(conn: AsyncConnection, programme_id: int, external_id: str) -> tuple[int, str] | None:
    stmt = select(members.c.id, members.c.status).where(
        members.c.programme_id == programme_id, members.c.external_id == external_id
    )
    if distribution.Layout.citus:
        # The id is a function of the external id there: the read names the member's shard.
        stmt = stmt.where(members.c.id == distribution.member_key(programme_id, external_id))
    row = (await conn.execute(stmt)).first()
    return (int(row[0]), str(row[1])) if row else None


async def external_id(conn: AsyncConnection, programme_id: int, member_id: int) -> str:
    value = await conn.scalar(
        select(members.c.external_id).where(members.c.programme_id == programme_id, members.c.id == member_id)
    )
    return str(value)


_LADDER_TIERS = text(
    "SELECT lv.definition->'tiers' FROM tier_ladder_versions lv WHERE lv.programme_id = :p"
    " AND lv.status IN ('published', 'superseded') AND lv.effective_at <= :now"
    " ORDER BY lv.effective_at DESC, lv.version DESC LIMIT 1"
)


async def member_tier(
    conn: AsyncConnection, programme_id: int, member_id: int, now: datetime, *, lock: bool = False
) -> tuple[str, int] | None:
    """The member's tier and its rank as the tier engine reads them (definition.state_for): no
    row, or a tier the ladder in force no longer has, is that ladder's base tier; without a
    ladder, the row as stored (None without one). With ``lock`` the tier row is locked (FOR NO
    KEY UPDATE) so that a tier change waits for this transaction (a consumption cannot slip
    past a demotion). Not FOR SHARE: a stream of share lockers can starve the updater; this
    lock queues fairly."""
    stmt = select(member_tiers.c.tier, member_tiers.c.rank).where(
        member_tiers.c.programme_id == programme_id, member_tiers.c.member_id == member_id
    )
    if lock:
        stmt = stmt.with_for_update(key_share=True)
    row = (await conn.execute(stmt)).first()
    stored = (str(row[0]), int(row[1] or 0)) if row else None
    ladder = await conn.scalar(_LADDER_TIERS, {"p": programme_id, "now": now})
    if not ladder:
        return stored
    ranks = {str(t["code"]): int(t["rank"]) for t in ladder}
    if stored is not None and stored[0] in ranks:
        return stored[0], ranks[stored[0]]
    base = min(ranks, key=lambda code: ranks[code])
    return base, ranks[base]


async def tier_benefit_params(
    conn: AsyncConnection, programme_id: int, tier: str, benefit_ids: Sequence[int] | None = None
) -> dict[int, dict[str, Any]]:
    stmt = select(tier_benefits.c.benefit_id, tier_benefits.c.params).where(
        tier_benefits.c.programme_id == programme_id, tier_benefits.c.tier == tier
    )
    if benefit_ids is not None:
        stmt = stmt.where(tier_benefits.c.benefit_id.in_(list(benefit_ids)))
    return {int(r[0]): dict(r[1]) for r in await conn.execute(stmt)}


# The version of the ladder in force at :now, as tiers.repository.current_version picks it.
_VERSION_IN_FORCE = (
    "SELECT v.version FROM tier_ladder_versions v "
    "WHERE v.programme_id = :p AND v.status IN ('published', 'superseded') AND v.effective_at <= :now "
    "ORDER BY v.effective_at DESC, v.version DESC LIMIT 1"
)


async def ladder_ranks(conn: AsyncConnection, programme_id: int, now: datetime) -> dict[str, int]:
    """Tier code -> rank on the ladder in force (empty without a published ladder)."""
    rows = await conn.execute(
        text(
            "SELECT e->>'code', (e->>'rank')::int FROM tier_ladder_versions v, "
            "jsonb_array_elements(v.definition->'tiers') e "
            f"WHERE v.programme_id = :p AND v.version = ({_VERSION_IN_FORCE})"
        ),
        {"p": programme_id, "now": now},
    )
    return {str(code): int(rank) for code, rank in rows}


async def ladder_tier_codes(conn: AsyncConnection, programme_id: int, now: datetime) -> set[str] | None:
    """Tier codes of the ladder in force and of every version published to take over later;
    None when the programme has never published a ladder."""
    rows = await conn.execute(
        text(
            "SELECT v.version, e->>'code' FROM tier_ladder_versions v "
            "LEFT JOIN LATERAL jsonb_array_elements(v.definition->'tiers') e ON true "
            "WHERE v.programme_id = :p AND v.status IN ('published', 'superseded') "
            f"AND (v.effective_at > :now OR v.version = ({_VERSION_IN_FORCE}))"
        ),
        {"p": programme_id, "now": now},
    )
    found = rows.all()
    return {str(code) for _, code in found if code is not None} if found else None


async def active_grants(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    now: datetime,
    benefit_ids: Sequence[int] | None = None,
    *,
    lock: bool = False,
) -> list[dict[str, Any]]:
    """Grants in force; with ``lock`` held FOR NO KEY UPDATE, so a revocation waits for this
    transaction and a consumption that starts after the revocation commits cannot see them.
    (Consumptions of one member's grant serialise; the usage row serialises them anyway.)"""
    stmt = select(
        grants.c.id, grants.c.benefit_id, grants.c.params, grants.c.expires_at, grants.c.reason
    ).where(
        grants.c.programme_id == programme_id,
        grants.c.member_id == member_id,
        grants.c.revoked_at.is_(None),
        or_(grants.c.expires_at.is_(None), grants.c.expires_at > now),
    )
    if benefit_ids is not None:
        stmt = stmt.where(grants.c.benefit_id.in_(list(benefit_ids)))
    if lock:
        stmt = stmt.with_for_update(key_share=True)
    return [dict(r._mapping) for r in await conn.execute(stmt.order_by(grants.c.id))]


async def active_campaigns(
    conn: AsyncConnection, programme_id: int, now: datetime, benefit_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Campaigns running now, with their segment's rule (JSON)."""
    sql = (
        "SELECT c.code, c.benefit_id, c.params, c.ends_at, s.rule FROM benefit_campaigns c "
        "JOIN segments s ON s.programme_id = c.programme_id AND s.code = c.segment "
        "WHERE c.programme_id = :p AND c.starts_at <= :now AND c.ends_at > :now"
    )
    params: dict[str, Any] = {"p": programme_id, "now": now}
    if benefit_ids is not None:
        sql += " AND c.benefit_id = ANY(:b)"
        params["b"] = list(benefit_ids)
    return [dict(r._mapping) for r in await conn.execute(text(sql + " ORDER BY c.code"), params)]


async def usage_in(
    conn: AsyncConnection, programme_id: int, member_id: int, periods: dict[int, date]
) -> dict[int, int]:
    """used + reserved per benefit for the given (benefit -> period start)."""
    if not periods:
        return {}
    rows = await conn.execute(
        select(usage.c.benefit_id, usage.c.period_start, usage.c.used + usage.c.reserved).where(
            usage.c.programme_id == programme_id,
            usage.c.member_id == member_id,
            usage.c.benefit_id.in_(list(periods)),
        )
    )
    return {int(b): int(n) for b, start, n in rows if periods.get(int(b)) == start}
