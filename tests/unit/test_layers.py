"""The facts kernel reads two tables whose owners sit above it (members, member_tiers) by name
from the shared metadata: they must be the very tables of those domains' models, or a query
joining facts_from() with a domain's own columns would list the table twice."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import loyalty.models_registry  # noqa: F401  (every table on the metadata, as the app has it)
from loyalty.facts import repository as facts
from loyalty.members.models import Member
from loyalty.tiers.models import MemberTier


def test_the_facts_join_uses_the_members_and_tiers_models_own_tables() -> None:
    joined = facts.facts_from()
    tables = {joined.left.left, joined.left.right, joined.right}
    assert Member.__table__ in tables
    assert MemberTier.__table__ in tables
    assert facts.facts in tables


def test_a_query_over_facts_and_a_domains_own_columns_has_one_members_table() -> None:
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql

    columns = facts.fact_columns(datetime(2026, 1, 1, tzinfo=UTC))
    members = Member.__table__
    stmt = (
        select(members.c.external_id, columns.columns["tier"])
        .select_from(facts.facts_from())
        .where(members.c.programme_id == 1)
    )
    sql = str(stmt.compile(dialect=postgresql.dialect()))
    # The table itself, not its columns (members.id): a second copy would be ", members".
    assert len(re.findall(r"\bmembers\b(?!\.)", sql)) == 1, sql
