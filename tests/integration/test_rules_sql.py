"""Rules in SQL select exactly the members ``evaluate`` accepts, on the real PostgreSQL.

Each example inserts a batch of generated members into a temporary table and selects, in the
same statement, the ids whose row satisfies ``to_sql(rule)``; that set must equal the ids for
which ``evaluate(rule, facts)`` is true. recency_days and enrolment_days are derived in SQL
from timestamps (days_since_sql) and in Python with days_since, so those agree too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    Table,
    Text,
    insert,
    literal,
    not_,
    null,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateTable

from loyalty.rules import (
    AllOf,
    AnyOf,
    FactColumns,
    MissingFactColumn,
    Not,
    Rule,
    days_since_sql,
    evaluate,
    parse_rule,
    to_sql,
)
from tests.unit.test_rules import NOW, STORED_INT_FACTS, facts_of, member_rows, rules

members_table = Table(
    "rule_members",
    MetaData(),
    Column("id", BigInteger, nullable=False),
    *(Column(name, BigInteger) for name in STORED_INT_FACTS),
    Column("lifecycle", Text),
    Column("tier", Text),
    Column("tags", ARRAY(Text)),
    Column("attributes", JSONB(none_as_null=True)),
    Column("last_order_at", DateTime(timezone=True)),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    prefixes=["TEMPORARY"],
)


@pytest.fixture(scope="module")
async def conn(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection in autocommit, so that a failing example cannot abort the next one's transaction."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.exec_driver_sql("DROP TABLE IF EXISTS pg_temp.rule_members")
        await connection.execute(CreateTable(members_table))
        try:
            yield connection
        finally:
            await connection.exec_driver_sql("DROP TABLE IF EXISTS pg_temp.rule_members")


def subtrees(rule: Rule) -> list[Rule]:
    """The rule and every rule inside it, leaves included."""
    if isinstance(rule, AllOf | AnyOf):
        return [rule, *(node for child in rule.rules for node in subtrees(child))]
    if isinstance(rule, Not):
        return [rule, *subtrees(rule.rule)]
    return [rule]


async def check_agreement(conn: AsyncConnection, rule: Rule, rows: list[dict[str, Any]]) -> None:
    """Insert the rows and compare SQL with evaluate, in one statement (one round trip).

    WHERE rule and WHERE NOT rule must split the members as evaluate does, losing none to NULL;
    and every subtree's expression, read in the select list, must be true or false as evaluate
    says: a NULL anywhere inside would show as None even where the tree around it masks it.
    """
    values = [
        {**row, "id": index, "attributes": null() if row["attributes"] is None else row["attributes"]}
        for index, row in enumerate(rows)
    ]
    batch = insert(members_table).values(values).returning(*members_table.c).cte("batch")
    columns = FactColumns.from_columns(
        batch.c,
        recency_days=days_since_sql(batch.c.last_order_at, now=NOW),
        enrolment_days=days_since_sql(batch.c.enrolled_at, now=NOW),
    )
    nodes = subtrees(rule)
    outcomes = [to_sql(node, columns).label(f"node_{index}") for index, node in enumerate(nodes)]
    condition = to_sql(rule, columns)
    statement = union_all(
        select(literal(True).label("selected"), batch.c.id, *outcomes).where(condition),
        select(literal(False).label("selected"), batch.c.id, *outcomes).where(not_(condition)),
    )
    result = (await conn.execute(statement)).all()
    facts = [facts_of(row) for row in rows]
    assert sorted((row.id, row.selected) for row in result) == [
        (index, evaluate(rule, member)) for index, member in enumerate(facts)
    ]
    for row in result:
        expected = [evaluate(node, facts[row.id]) for node in nodes]
        assert list(row[2:]) == expected, f"member {row.id}: {rows[row.id]}"


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rule=rules, rows=st.lists(member_rows, min_size=8, max_size=20))
async def test_sql_selects_the_members_evaluate_accepts(
    conn: AsyncConnection, rule: Rule, rows: list[dict[str, Any]]
) -> None:
    await check_agreement(conn, rule, rows)


# Hand-picked members where a careless translation would go wrong, run through every rule below.
TRICKY_ROWS: list[dict[str, Any]] = [
    {"attributes": None, "tags": None},
    {"attributes": {}, "tags": []},
    {"attributes": {"a": None}},
    {"attributes": {"a": 3}},
    {"attributes": {"a": 3.0}},
    {"attributes": {"a": 3.5}},
    {"attributes": {"a": -0.0}},
    {"attributes": {"a": "3"}},
    {"attributes": {"a": "10"}},
    {"attributes": {"a": ""}},  # "10" < "3" as text: must not be ordered at all
    {"attributes": {"a": True}},
    {"attributes": {"a": False}},
    {"attributes": {"a": [3]}},
    {"attributes": {"a": {"a": 3}}},
    {"attributes": {"a": 10**30}},
    {"attributes": {"a": float(2**60)}},
    {"attributes": {"a": 1e300}},
    {"attributes": {"a": 0.1}},
    {"tags": ["vip", "VIP"]},
    {"tier": "gold", "lifecycle": "active", "spend": 0},
    {"tier": "Gold", "spend": -(2**63)},
    {"spend": 2**63 - 1},
]
TRICKY_RULES = [
    {"fact": "attributes.a", "op": op, "value": value}
    for op in ("==", "!=", ">", ">=", "<", "<=")
    for value in (3, 0, 1152921504606846976, 1152921504606847000, True, "3", "10", "")
    if op in ("==", "!=") or isinstance(value, int) and not isinstance(value, bool)
] + [
    {"fact": "attributes.a", "op": "between", "value": [3, 3]},
    {"fact": "attributes.a", "op": "in", "value": [3, 4]},
    {"fact": "attributes.a", "op": "not_in", "value": [3, 4]},
    {"fact": "attributes.a", "op": "not_in", "value": ["3"]},
    {"fact": "attributes.a", "op": "in", "value": [False]},
    {"fact": "attributes.a", "op": "is_set"},
    {"fact": "attributes.a", "op": "is_not_set"},
    {"fact": "tags", "op": "contains", "value": "vip"},
    {"fact": "tags", "op": "contains_all", "value": ["vip", "VIP"]},
    {"fact": "tags", "op": "is_set"},
    {"fact": "tags", "op": "is_not_set"},
    {"fact": "tier", "op": "!=", "value": "gold"},
    {"fact": "tier", "op": "not_in", "value": ["gold", "x"]},
    {"fact": "lifecycle", "op": "in", "value": ["active"]},
    {"fact": "spend", "op": "between", "value": [-(2**63), 2**63 - 1]},
    {"fact": "spend", "op": "!=", "value": 0},
    {"fact": "recency_days", "op": "is_not_set"},
    {"fact": "enrolment_days", "op": "==", "value": 0},
]


@pytest.mark.parametrize("document", TRICKY_RULES, ids=str)
async def test_tricky_members(conn: AsyncConnection, document: Any) -> None:
    base = {name: None for name in STORED_INT_FACTS} | {
        "lifecycle": None,
        "tier": None,
        "tags": None,
        "attributes": None,
        "last_order_at": None,
        "enrolled_at": NOW,
    }
    rows = [base | row for row in TRICKY_ROWS]
    await check_agreement(conn, parse_rule(document), rows)


def test_literals_are_bind_parameters() -> None:
    rule = parse_rule(
        {
            "any": [
                {"fact": "tier", "op": "in", "value": ["x'); DROP TABLE members; --"]},
                {"fact": "attributes.k-1", "op": "==", "value": "o'clock"},
                {"fact": "tags", "op": "contains", "value": "it's"},
            ]
        }
    )
    sql = str(select(members_table.c.id).where(to_sql(rule, FactColumns.from_columns(members_table.c))))
    assert "DROP" not in sql and "clock" not in sql and "it's" not in sql and "k-1" not in sql


def test_a_fact_without_a_column_is_named() -> None:
    rule = parse_rule({"fact": "recency_days", "op": "<", "value": 30})
    with pytest.raises(MissingFactColumn, match="'recency_days'"):
        to_sql(rule, FactColumns.from_columns(members_table.c))
