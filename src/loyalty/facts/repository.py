"""Where the rule language finds each member's facts: one FROM clause for set-based work and
one loader for a single member, so that the SQL and in-memory predicates read the same values.

members m LEFT JOIN member_facts f LEFT JOIN member_tiers t: a member with no activity yet has
the defaults (zero counts, lifecycle 'new', no tier row = the ladder's base tier is applied by
the tier engine, not here).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import Select, and_, cast, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.schema import Table
from sqlalchemy.types import Text

from loyalty.db import Base
from loyalty.facts.models import MemberFacts
from loyalty.rules.facts import Facts, days_since
from loyalty.rules.sql import FactColumns, days_since_sql

facts = MemberFacts.__table__


def _owned_elsewhere(name: str) -> Table:
    """A table of a domain above this kernel (members, member_tiers), found by name in the one
    metadata: the facts read its columns without importing that domain. Every models module is
    imported before a query is built (models_registry, the app's routes)."""
    return Base.metadata.tables[name]


_ATTRIBUTES = msgspec.json.Decoder(float_hook=Decimal)
_INTEGER_FACTS = (
    "qualifying_points",
    "spend",
    "orders",
    "lifetime_points",
    "lifetime_spend",
    "lifetime_orders",
)


def facts_from() -> FromClause:
    """members LEFT JOIN member_facts LEFT JOIN member_tiers, on programme and member."""
    members, tiers = _owned_elsewhere("members"), _owned_elsewhere("member_tiers")
    return members.outerjoin(
        facts, and_(facts.c.programme_id == members.c.programme_id, facts.c.member_id == members.c.id)
    ).outerjoin(
        tiers, and_(tiers.c.programme_id == members.c.programme_id, tiers.c.member_id == members.c.id)
    )


def fact_columns(now: datetime) -> FactColumns:
    """The rule language's columns over facts_from(), with the derived facts as of ``now``."""
    members, tiers = _owned_elsewhere("members"), _owned_elsewhere("member_tiers")
    now_sql = literal(now)
    columns: dict[str, Any] = {name: func.coalesce(facts.c[name], 0) for name in _INTEGER_FACTS}
    columns.update(
        recency_days=days_since_sql(facts.c.last_order_at, now=now_sql),
        enrolment_days=days_since_sql(members.c.enrolled_at, now=now_sql),
        recency_score=facts.c.recency_score,
        frequency_score=facts.c.frequency_score,
        monetary_score=facts.c.monetary_score,
        lifecycle=func.coalesce(facts.c.lifecycle, "new"),
        tier=tiers.c.tier,
        tags=func.coalesce(facts.c.tags, cast(literal([]), ARRAY(Text))),
        attributes=members.c.attributes,
    )
    return FactColumns(columns)


def _facts_select(programme_id: int, member_id: int) -> Select[Any]:
    members, tiers = _owned_elsewhere("members"), _owned_elsewhere("member_tiers")
    return (
        select(
            *(facts.c[name] for name in _INTEGER_FACTS),
            facts.c.last_order_at,
            members.c.enrolled_at,
            facts.c.recency_score,
            facts.c.frequency_score,
            facts.c.monetary_score,
            facts.c.lifecycle,
            tiers.c.tier,
            facts.c.tags,
            cast(members.c.attributes, Text).label("attributes"),
        )
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id, members.c.id == member_id)
    )


def row_to_facts(row: Any, *, now: datetime) -> Facts:
    # Attributes are decoded with Decimal for non-integers, so they compare as PostgreSQL does.
    attributes = _ATTRIBUTES.decode(row.attributes) if row.attributes else {}
    return Facts(
        **{name: row._mapping[name] or 0 for name in _INTEGER_FACTS},
        recency_days=days_since(row.last_order_at, now=now),
        enrolment_days=days_since(row.enrolled_at, now=now),
        recency_score=row.recency_score,
        frequency_score=row.frequency_score,
        monetary_score=row.monetary_score,
        lifecycle=row.lifecycle or "new",
        tier=row.tier,
        tags=frozenset(row.tags or ()),
        attributes=attributes,
    )


async def load_facts(
    conn: AsyncConnection, *, programme_id: int, member_id: int, now: datetime
) -> Facts | None:
    """One member's facts as of ``now``; None if the member does not exist."""
    row = (await conn.execute(_facts_select(programme_id, member_id))).first()
    return None if row is None else row_to_facts(row, now=now)


def facts_to_json(value: Facts) -> dict[str, Any]:
    """The facts as stored in a tier history row or shown to an operator."""
    out = {
        name: getattr(value, name)
        for name in Facts.__dataclass_fields__
        if name not in ("tags", "attributes")
    }
    out["tags"] = sorted(value.tags)
    out["attributes"] = msgspec.to_builtins(dict(value.attributes))
    return out
