"""All SQL of benefits. The checkout check is one asyncpg statement (CHECK_SQL); the rest runs
on the request's SQLAlchemy connection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import asyncpg
import msgspec
from sqlalchemy import Table, and_, case, exists, func, insert, literal, or_, select, text, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import rules
from loyalty.activity.facts import fact_columns, facts_from
from loyalty.benefits.core import BenefitDef
from loyalty.benefits.models import (
    Benefit,
    BenefitCampaign,
    BenefitConsumption,
    BenefitGrant,
    BenefitUsage,
    TierBenefit,
)
from loyalty.errors import Conflict
from loyalty.events.models import DomainEvent
from loyalty.members.models import Member
from loyalty.tiers.models import MemberTier

benefits = cast(Table, Benefit.__table__)
tier_benefits = cast(Table, TierBenefit.__table__)
campaigns = cast(Table, BenefitCampaign.__table__)
grants = cast(Table, BenefitGrant.__table__)
usage = cast(Table, BenefitUsage.__table__)
consumptions = cast(Table, BenefitConsumption.__table__)
members = cast(Table, Member.__table__)
member_tiers = cast(Table, MemberTier.__table__)
events = cast(Table, DomainEvent.__table__)

_BENEFIT_COLUMNS = (
    benefits.c.id,
    benefits.c.code,
    benefits.c.type,
    benefits.c.names,
    benefits.c.descriptions,
    benefits.c.params,
    benefits.c.channels,
    benefits.c.valid_from,
    benefits.c.valid_until,
    benefits.c.active,
    benefits.c.created_at,
    benefits.c.updated_at,
)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# Catalogue -------------------------------------------------------------------------------


async def bump_version(conn: AsyncConnection, programme_id: int) -> None:
    """Every catalogue write calls this in its transaction: checkout caches reload on it."""
    await conn.execute(
        text(
            "INSERT INTO benefit_catalogue_versions (programme_id) VALUES (:p) "
            "ON CONFLICT (programme_id) DO UPDATE SET version = benefit_catalogue_versions.version + 1"
        ),
        {"p": programme_id},
    )


async def create_benefit(conn: AsyncConnection, programme_id: int, values: dict[str, Any]) -> dict[str, Any]:
    try:
        async with conn.begin_nested():
            row = (
                await conn.execute(
                    insert(benefits).values(programme_id=programme_id, **values).returning(*_BENEFIT_COLUMNS)
                )
            ).one()
    except IntegrityError:
        raise Conflict(
            "A benefit with this code exists.", code="benefit_exists", extra={"code": values["code"]}
        ) from None
    await bump_version(conn, programme_id)
    return dict(row._mapping)


async def update_benefit(
    conn: AsyncConnection, programme_id: int, code: str, values: dict[str, Any]
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            update(benefits)
            .where(benefits.c.programme_id == programme_id, benefits.c.code == code)
            .values(**values, updated_at=func.now())
            .returning(*_BENEFIT_COLUMNS)
        )
    ).first()
    if row is not None:
        await bump_version(conn, programme_id)
    return dict(row._mapping) if row else None


async def benefit(conn: AsyncConnection, programme_id: int, code: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(*_BENEFIT_COLUMNS).where(benefits.c.programme_id == programme_id, benefits.c.code == code)
        )
    ).first()
    return dict(row._mapping) if row else None


async def all_benefits(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(*_BENEFIT_COLUMNS).where(benefits.c.programme_id == programme_id).order_by(benefits.c.code)
    )
    return [dict(r._mapping) for r in rows]


async def set_tier_benefits(
    conn: AsyncConnection, programme_id: int, tier: str, items: Sequence[tuple[int, dict[str, Any]]]
) -> None:
    await conn.execute(
        tier_benefits.delete().where(
            tier_benefits.c.programme_id == programme_id, tier_benefits.c.tier == tier
        )
    )
    if items:
        await conn.execute(
            insert(tier_benefits),
            [{"programme_id": programme_id, "tier": tier, "benefit_id": b, "params": p} for b, p in items],
        )
    await bump_version(conn, programme_id)


async def all_tier_benefits(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(tier_benefits.c.tier, benefits.c.code, tier_benefits.c.params)
        .join(
            benefits,
            and_(
                benefits.c.programme_id == tier_benefits.c.programme_id,
                benefits.c.id == tier_benefits.c.benefit_id,
            ),
        )
        .where(tier_benefits.c.programme_id == programme_id)
        .order_by(tier_benefits.c.tier, benefits.c.code)
    )
    return [dict(r._mapping) for r in rows]


async def create_campaign(conn: AsyncConnection, programme_id: int, values: dict[str, Any]) -> dict[str, Any]:
    try:
        async with conn.begin_nested():
            row = (
                await conn.execute(
                    insert(campaigns)
                    .values(programme_id=programme_id, **values)
                    .returning(
                        campaigns.c.code,
                        campaigns.c.segment,
                        campaigns.c.starts_at,
                        campaigns.c.ends_at,
                        campaigns.c.params,
                        campaigns.c.announced_at,
                    )
                )
            ).one()
    except IntegrityError:
        raise Conflict(
            "A campaign with this code exists.", code="campaign_exists", extra={"code": values["code"]}
        ) from None
    await bump_version(conn, programme_id)
    return dict(row._mapping)


async def all_campaigns(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            campaigns.c.code,
            campaigns.c.segment,
            benefits.c.code.label("benefit"),
            campaigns.c.starts_at,
            campaigns.c.ends_at,
            campaigns.c.params,
            campaigns.c.announced_at,
        )
        .join(
            benefits,
            and_(
                benefits.c.programme_id == campaigns.c.programme_id, benefits.c.id == campaigns.c.benefit_id
            ),
        )
        .where(campaigns.c.programme_id == programme_id)
        .order_by(campaigns.c.code)
    )
    return [dict(r._mapping) for r in rows]


async def catalogue(conn: asyncpg.Connection, programme_id: int) -> tuple[int, list[Any], list[Any]]:
    """(version, benefits, tier benefits) for the checkout cache, read in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await conn.fetchval(
            "SELECT version FROM benefit_catalogue_versions WHERE programme_id = $1", programme_id
        )
        rows = await conn.fetch(
            "SELECT id, code, type, params::text AS params, channels, valid_from, valid_until, active "
            "FROM benefits WHERE programme_id = $1",
            programme_id,
        )
        tiers = await conn.fetch(
            "SELECT tier, benefit_id, params::text AS params FROM tier_benefits WHERE programme_id = $1",
            programme_id,
        )
    return int(version or 0), list(rows), list(tiers)


# Members and sources ---------------------------------------------------------------------


async def member(conn: AsyncConnection, programme_id: int, external_id: str) -> tuple[int, str] | None:
    row = (
        await conn.execute(
            select(members.c.id, members.c.status).where(
                members.c.programme_id == programme_id, members.c.external_id == external_id
            )
        )
    ).first()
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


async def tier_map(
    conn: AsyncConnection, programme_id: int, benefit_id: int | None = None
) -> dict[int, dict[str, dict[str, Any]]]:
    """benefit id -> tier code -> the parameters the tier gives (what each tier includes)."""
    stmt = select(tier_benefits.c.benefit_id, tier_benefits.c.tier, tier_benefits.c.params).where(
        tier_benefits.c.programme_id == programme_id
    )
    if benefit_id is not None:
        stmt = stmt.where(tier_benefits.c.benefit_id == benefit_id)
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for b, tier, params in await conn.execute(stmt):
        out.setdefault(int(b), {})[tier] = dict(params)
    return out


async def upgrade_benefits(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(*_BENEFIT_COLUMNS).where(benefits.c.programme_id == programme_id, benefits.c.type == "upgrade")
    )
    return [dict(r._mapping) for r in rows]


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


async def insert_grant(conn: AsyncConnection, programme_id: int, values: dict[str, Any]) -> dict[str, Any]:
    row = (
        await conn.execute(
            insert(grants)
            .values(programme_id=programme_id, **values)
            .returning(grants.c.id, grants.c.granted_at, grants.c.expires_at)
        )
    ).one()
    return dict(row._mapping)


async def grant_state(
    conn: AsyncConnection, programme_id: int, member_id: int, grant_id: int
) -> dict[str, Any] | None:
    """A grant as the audit trail shows it: what, until when, and whether it is revoked."""
    row = (
        await conn.execute(
            select(
                grants.c.id,
                benefits.c.code.label("benefit"),
                grants.c.expires_at,
                grants.c.revoked_at,
                grants.c.revoke_reason,
            )
            .join(
                benefits,
                (benefits.c.programme_id == grants.c.programme_id) & (benefits.c.id == grants.c.benefit_id),
            )
            .where(
                grants.c.programme_id == programme_id,
                grants.c.member_id == member_id,
                grants.c.id == grant_id,
            )
        )
    ).first()
    return dict(row._mapping) if row else None


async def revoke_grant(
    conn: AsyncConnection, programme_id: int, member_id: int, grant_id: int, reason: str, now: datetime
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            update(grants)
            .where(
                grants.c.programme_id == programme_id,
                grants.c.member_id == member_id,
                grants.c.id == grant_id,
            )
            .values(revoked_at=func.coalesce(grants.c.revoked_at, now), revoke_reason=reason)
            .returning(grants.c.id, grants.c.benefit_id, grants.c.revoked_at)
        )
    ).first()
    return dict(row._mapping) if row else None


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


# Consumption -----------------------------------------------------------------------------


# One use of a benefit, decided and written by one call of benefit_consume
# (sql/benefit_consume_v1.sql): the answer is its JSON text.
CONSUME_SQL = "SELECT benefit_consume($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_CONSUME_TEXT = text(
    "SELECT benefit_consume(:p, :code, :member, :order, :channel, :reserve, :expires_at, :now, :tz, :segments)"
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


async def consume_pooled(conn: asyncpg.Connection, call: ConsumeCall) -> str:
    """benefit_consume on a pooled asyncpg connection: the statement is its own transaction."""
    return cast(str, await conn.fetchval(CONSUME_SQL, *call.args()))


async def consume_in(conn: AsyncConnection, call: ConsumeCall) -> str:
    """benefit_consume in the caller's SQLAlchemy transaction (its locks last until it ends)."""
    names = ("p", "code", "member", "order", "channel", "reserve", "expires_at", "now", "tz", "segments")
    return cast(str, await conn.scalar(_CONSUME_TEXT, dict(zip(names, call.args(), strict=True))))


async def consumption(
    conn: AsyncConnection, programme_id: int, benefit_id: int, order_reference: str, *, lock: bool = False
) -> dict[str, Any] | None:
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
    conn: AsyncConnection, programme_id: int, consumption_id: int, state: str
) -> None:
    await conn.execute(
        update(consumptions)
        .where(consumptions.c.programme_id == programme_id, consumptions.c.id == consumption_id)
        .values(state=state, updated_at=func.now())
    )


async def release_expired(conn: AsyncConnection, now: datetime, limit: int = 1000) -> int:
    """Releases reservations past their timeout, a batch at a time, in one statement."""
    result = await conn.execute(
        text(
            """
            WITH due AS (
                SELECT programme_id, id FROM benefit_consumptions
                WHERE state = 'reserved' AND expires_at < :now
                ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
            ), released AS (
                UPDATE benefit_consumptions c SET state = 'released', updated_at = now()
                FROM due WHERE c.programme_id = due.programme_id AND c.id = due.id
                RETURNING c.programme_id, c.member_id, c.benefit_id, c.period_start
            ), per_row AS (
                SELECT programme_id, member_id, benefit_id, period_start, count(*) AS n
                FROM released WHERE period_start IS NOT NULL GROUP BY 1, 2, 3, 4
            ), moved AS (
                UPDATE benefit_usage u SET reserved = u.reserved - per_row.n FROM per_row
                WHERE u.programme_id = per_row.programme_id AND u.member_id = per_row.member_id
                  AND u.benefit_id = per_row.benefit_id AND u.period_start = per_row.period_start
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM moved)
            """
        ),
        {"now": now, "limit": limit},
    )
    return int(result.one()[0])


async def programmes_with_gifts(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT DISTINCT p.id, p.code, p.timezone FROM programmes p "
            "JOIN benefits b ON b.programme_id = p.id AND b.type = 'gift' AND b.active ORDER BY p.id"
        )
    )
    return [dict(r._mapping) for r in rows]


# Marketing: who is entitled --------------------------------------------------------------


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


# Campaign announcements ------------------------------------------------------------------


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
        sql_cast(literal(_json(payload)), JSONB)
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


# The checkout check: one statement -------------------------------------------------------

# $1 programme, $2 member external id, $3 benefit id, $4 now, $5 the quota period's start (or
# null), $6 the ids of the upgrade benefits that could bring $3 and $7 the tiers that include
# one of them (both from the cached catalogue; empty when no upgrade can bring $3, which skips
# that part). Everything that may change between two checks (tier, grants, revocations,
# campaigns and their segment rules, usage, facts, the ladder in force) is read here live;
# only the catalogue version is compared with the cache. The upgrade grants and campaigns of
# the member, and the ranks of the ladder in force, are read only when an upgrade may apply.
CHECK_SQL = """
SELECT m.id AS member_id, m.status,
       (SELECT v.version FROM benefit_catalogue_versions v WHERE v.programme_id = $1) AS version,
       et.tier, et.rank AS tier_rank,
       (SELECT jsonb_agg(jsonb_build_object('id', g.id, 'params', g.params, 'expires_at', g.expires_at)
                         ORDER BY g.id)
          FROM benefit_grants g
         WHERE g.programme_id = $1 AND g.member_id = m.id AND g.benefit_id = $3
           AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > $4))::text AS grants,
       (SELECT jsonb_agg(jsonb_build_object('code', c.code, 'rule', s.rule, 'params', c.params,
                                            'ends_at', c.ends_at) ORDER BY c.code)
          FROM benefit_campaigns c
          JOIN segments s ON s.programme_id = c.programme_id AND s.code = c.segment
         WHERE c.programme_id = $1 AND c.benefit_id = $3 AND c.starts_at <= $4 AND c.ends_at > $4)::text
         AS campaigns,
       (SELECT u.used + u.reserved FROM benefit_usage u
         WHERE u.programme_id = $1 AND u.member_id = m.id AND u.benefit_id = $3
           AND u.period_start = $5) AS used,
       up.upgrades::text AS upgrades,
       (SELECT jsonb_object_agg(e->>'code', (e->>'rank')::int) FROM jsonb_array_elements(lad.tiers) e
         WHERE up.upgrades IS NOT NULL OR et.tier = ANY($7::text[]))::text AS ranks,
       f.qualifying_points, f.spend, f.orders, f.lifetime_points, f.lifetime_spend, f.lifetime_orders,
       f.last_order_at, m.enrolled_at, f.recency_score, f.frequency_score, f.monetary_score,
       f.lifecycle, f.tags, m.attributes::text AS attributes
  FROM members m
  LEFT JOIN member_facts f ON f.programme_id = m.programme_id AND f.member_id = m.id
  LEFT JOIN member_tiers t ON t.programme_id = m.programme_id AND t.member_id = m.id
  LEFT JOIN LATERAL (
       SELECT lv.definition->'tiers' AS tiers FROM tier_ladder_versions lv
        WHERE lv.programme_id = $1 AND lv.status IN ('published', 'superseded') AND lv.effective_at <= $4
        ORDER BY lv.effective_at DESC, lv.version DESC LIMIT 1
       ) lad ON true
  -- The tier as the tier engine reads it (definition.state_for): no row, or a tier the ladder
  -- in force no longer has, is its base tier; without a ladder, the row as stored.
  CROSS JOIN LATERAL (
       SELECT coalesce(k.code, t.tier) AS tier, coalesce(k.rank, t.rank) AS rank
         FROM (SELECT NULL) one
         LEFT JOIN LATERAL (
              SELECT e->>'code' AS code, (e->>'rank')::int AS rank FROM jsonb_array_elements(lad.tiers) e
               ORDER BY e->>'code' IS NOT DISTINCT FROM t.tier DESC, (e->>'rank')::int LIMIT 1
              ) k ON true
       ) et
  LEFT JOIN LATERAL (
       SELECT jsonb_agg(x ORDER BY x.kind, x.ref) AS upgrades
         FROM (SELECT 'grant' AS kind, g.id::text AS ref, g.benefit_id, g.params,
                      g.expires_at AS until, NULL::jsonb AS rule
                 FROM benefit_grants g
                WHERE cardinality($6::bigint[]) > 0
                  AND g.programme_id = $1 AND g.member_id = m.id AND g.benefit_id = ANY($6::bigint[])
                  AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > $4)
               UNION ALL
               SELECT 'segment', c.code, c.benefit_id, c.params, c.ends_at, s.rule
                 FROM benefit_campaigns c
                 JOIN segments s ON s.programme_id = c.programme_id AND s.code = c.segment
                WHERE cardinality($6::bigint[]) > 0
                  AND c.programme_id = $1 AND c.benefit_id = ANY($6::bigint[])
                  AND c.starts_at <= $4 AND c.ends_at > $4) x
       ) up ON true
 WHERE m.programme_id = $1 AND m.external_id = $2
"""


async def check_row(
    conn: asyncpg.Connection,
    programme_id: int,
    external_id: str,
    benefit_id: int,
    now: datetime,
    period_start: date | None,
    upgrade_ids: Sequence[int] = (),
    upgrade_tiers: Sequence[str] = (),
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        CHECK_SQL,
        programme_id,
        external_id,
        benefit_id,
        now,
        period_start,
        list(upgrade_ids),
        list(upgrade_tiers),
    )


def catalogue_row(row: Any) -> BenefitDef:
    return BenefitDef(
        id=int(row["id"]),
        code=row["code"],
        type=row["type"],
        params=msgspec.json.decode(row["params"]) if isinstance(row["params"], str) else dict(row["params"]),
        channels=tuple(row["channels"] or ()),
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        active=bool(row["active"]),
    )
