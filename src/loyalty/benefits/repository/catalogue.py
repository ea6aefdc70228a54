"""SQL of the catalogue: benefit definitions, what each tier includes, campaigns' definitions,
the catalogue version every write bumps, and the checkout cache's one-snapshot read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import and_, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.benefits.core import BenefitDef
from loyalty.benefits.repository.tables import (
    BENEFIT_COLUMNS,
    benefits,
    campaigns,
    tier_benefits,
)
from loyalty.errors import Conflict
from loyalty.programmes.repository import bump_config_version


async def bump_version(conn: AsyncConnection, programme_id: int) -> None:
    """Every catalogue write calls this in its transaction: checkout caches reload on it, and
    the programme's config_version moves (on Citus the benefits table carries no trigger)."""
    await bump_config_version(conn, programme_id)
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
                    insert(benefits).values(programme_id=programme_id, **values).returning(*BENEFIT_COLUMNS)
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
            .returning(*BENEFIT_COLUMNS)
        )
    ).first()
    if row is not None:
        await bump_version(conn, programme_id)
    return dict(row._mapping) if row else None


async def benefit(conn: AsyncConnection, programme_id: int, code: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(*BENEFIT_COLUMNS).where(benefits.c.programme_id == programme_id, benefits.c.code == code)
        )
    ).first()
    return dict(row._mapping) if row else None


async def all_benefits(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(*BENEFIT_COLUMNS).where(benefits.c.programme_id == programme_id).order_by(benefits.c.code)
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
        select(*BENEFIT_COLUMNS).where(benefits.c.programme_id == programme_id, benefits.c.type == "upgrade")
    )
    return [dict(r._mapping) for r in rows]


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
