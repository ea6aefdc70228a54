"""SQL of who is entitled to a benefit: the sources compiled to one WHERE clause over the
members' facts, for keyset pages and counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import rules
from loyalty.benefits.repository.tables import (
    grants,
    member_tiers,
    members,
)
from loyalty.facts.repository import fact_columns, facts_from


@dataclass(frozen=True, slots=True)
class UpgradePath:
    """One way to a benefit through an upgrade: upgrade benefit ``benefit_id`` treating the
    member as ``tier`` (rank ``rank`` on the ladder in force, which includes the benefit), given
    by a grant of it (the grant's tier, else ``default_tier``), by a running campaign of it
    whose merged tier is ``tier`` (``segment_rules``) or by a member tier that includes it so
    (``via_tiers``)."""

    benefit_id: int
    tier: str
    rank: int
    default_tier: str
    via_tiers: tuple[str, ...] = ()
    segment_rules: tuple[rules.Rule, ...] = ()


def _member_rank_sql(ranks: dict[str, int]) -> Any:
    """core.member_rank in SQL over facts_from(): the rank of the member's tier on the ladder in
    force, its stored rank when the ladder lacks it, 0 without a tier row."""
    stored = func.coalesce(member_tiers.c.rank, 0)
    if not ranks:
        return stored
    return case(*[(member_tiers.c.tier == code, rank) for code, rank in ranks.items()], else_=stored)


def _upgrade_condition(
    programme_id: int, paths: Sequence[UpgradePath], ranks: dict[str, int], now: datetime
) -> Any:
    if not paths:
        return literal(False)
    columns = fact_columns(now)
    rank = _member_rank_sql(ranks)
    parts = []
    for path in paths:
        by_grant = exists(
            select(literal(1)).where(
                grants.c.programme_id == programme_id,
                grants.c.member_id == members.c.id,
                grants.c.benefit_id == path.benefit_id,
                grants.c.revoked_at.is_(None),
                or_(grants.c.expires_at.is_(None), grants.c.expires_at > now),
                func.coalesce(grants.c.params["tier"].astext, path.default_tier) == path.tier,
            )
        )
        sources = [by_grant, *[rules.to_sql(r, columns) for r in path.segment_rules]]
        if path.via_tiers:
            sources.append(member_tiers.c.tier.in_(list(path.via_tiers)))
        parts.append(and_(rank < path.rank, or_(*sources)))
    return or_(*parts)


def _entitled_condition(
    programme_id: int, benefit_id: int, tiers: Sequence[str], rule_sql: Sequence[Any], now: datetime
) -> Any:
    has_grant = exists(
        select(literal(1)).where(
            grants.c.programme_id == programme_id,
            grants.c.member_id == members.c.id,
            grants.c.benefit_id == benefit_id,
            grants.c.revoked_at.is_(None),
            or_(grants.c.expires_at.is_(None), grants.c.expires_at > now),
        )
    )
    by_tier = member_tiers.c.tier.in_(list(tiers)) if tiers else None
    parts = [has_grant, *rule_sql] + ([by_tier] if by_tier is not None else [])
    return or_(*parts)


async def entitled_members(
    conn: AsyncConnection,
    programme_id: int,
    benefit_id: int,
    tiers: Sequence[str],
    segment_rules: Sequence[rules.Rule],
    now: datetime,
    after: str | None,
    limit: int,
    *,
    birthday: str | None = None,
    upgrades: Sequence[UpgradePath] = (),
    ranks: dict[str, int] | None = None,
) -> list[str]:
    """External ids of the active members entitled now, in order, after the cursor (keyset);
    with ``birthday`` ("MM-DD") only those whose CRM attribute ``birthday`` ends with it."""
    columns = fact_columns(now)
    condition = _entitled_condition(
        programme_id, benefit_id, tiers, [rules.to_sql(r, columns) for r in segment_rules], now
    )
    if upgrades:
        condition = or_(condition, _upgrade_condition(programme_id, upgrades, ranks or {}, now))
    if birthday is not None:
        condition = and_(condition, members.c.attributes["birthday"].astext.like(f"%{birthday}"))
    stmt = (
        select(members.c.external_id)
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id, members.c.status == "active", condition)
        .order_by(members.c.external_id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(members.c.external_id > after)
    return list((await conn.execute(stmt)).scalars())


async def entitled_count(
    conn: AsyncConnection,
    programme_id: int,
    benefit_id: int,
    tiers: Sequence[str],
    segment_rules: Sequence[rules.Rule],
    now: datetime,
    *,
    upgrades: Sequence[UpgradePath] = (),
    ranks: dict[str, int] | None = None,
) -> dict[str, int]:
    columns = fact_columns(now)
    by_grant = _entitled_condition(programme_id, benefit_id, (), (), now)
    by_segment = or_(*[rules.to_sql(r, columns) for r in segment_rules]) if segment_rules else literal(False)
    by_tier = member_tiers.c.tier.in_(list(tiers)) if tiers else literal(False)
    by_upgrade = _upgrade_condition(programme_id, upgrades, ranks or {}, now)
    stmt = (
        select(
            func.count().filter(or_(by_grant, by_segment, by_tier, by_upgrade)),
            func.count().filter(by_tier),
            func.count().filter(by_segment),
            func.count().filter(by_grant),
            func.count().filter(by_upgrade),
        )
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id, members.c.status == "active")
    )
    total, tier_n, segment_n, grant_n, upgrade_n = (await conn.execute(stmt)).one()
    return {
        "total": int(total),
        "tier": int(tier_n),
        "segment": int(segment_n),
        "grant": int(grant_n),
        "upgrade": int(upgrade_n),
    }
