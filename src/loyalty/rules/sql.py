"""Rules compiled to SQL: a boolean expression over the columns the caller joins.

Every expression this module builds is two-valued: it is never NULL, whatever the columns
hold, so that ``NOT`` in SQL negates exactly as ``not`` does in core.evaluate. Leaves are
guarded with ``col IS NOT NULL AND col <op> $n`` rather than wrapped in coalesce(), which
keeps them plain quals the planner can estimate and index. Literals are bind parameters, and
lists travel as one array parameter each, so a rule's SQL text does not grow with its lists.

Attributes (a JSONB column) are compared as jsonb values against jsonb literals, behind a
``jsonb_typeof`` guard in a CASE. No cast to numeric or text is involved, so there is no cast
the planner could move before the guard; jsonb compares numbers numerically and exactly
(1.0 = 1, 3.5 > 3), strings and booleans by value, and never raises on a type mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Text, and_, case, false, func, literal, not_, or_, true
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import all_, any_, extract, type_coerce
from sqlalchemy.types import TypeEngine

from loyalty.rules.core import AllOf, AnyOf, Condition, Not, Rule
from loyalty.rules.facts import ATTRIBUTE_PREFIX, CATALOGUE, Kind, attribute_key

SECONDS_PER_DAY = 86_400


class MissingFactColumn(LookupError):
    """A rule reads a fact the caller gave no column for: a programming error, not bad input."""

    def __init__(self, fact: str) -> None:
        super().__init__(f"the rule reads {fact!r}, but FactColumns has no column for it")
        self.fact = fact


@dataclass(frozen=True, slots=True)
class FactColumns:
    """Where each fact lives in the caller's FROM clause.

    Keys are catalogue fact names (``spend``, ``lifecycle``, ``tags`` ...) and ``attributes``
    for the JSONB column of CRM attributes. Integer facts want an integer expression, enum facts
    a text one (cast a PostgreSQL enum to text), ``tags`` a text[] (NULL reads as no tags).
    Only the facts a rule uses need a column.
    """

    columns: Mapping[str, ColumnElement[Any]] = field(default_factory=dict)

    @classmethod
    def from_columns(
        cls, columns: Iterable[ColumnElement[Any]], /, **expressions: ColumnElement[Any]
    ) -> FactColumns:
        """Pick the columns named like facts (e.g. ``table.c``), plus expressions for the others.

        ``FactColumns.from_columns(stats.c, recency_days=days_since_sql(stats.c.last_order_at, now=now))``
        """
        picked: dict[str, ColumnElement[Any]] = {
            column.key: column
            for column in columns
            if column.key is not None and (column.key in CATALOGUE or column.key == "attributes")
        }
        return cls({**picked, **expressions})

    def get(self, name: str) -> ColumnElement[Any]:
        column = self.columns.get(name)
        if column is None:
            raise MissingFactColumn(name)
        return column


def to_sql(rule: Rule, columns: FactColumns) -> ColumnElement[bool]:
    """A boolean expression that holds for exactly the members ``evaluate(rule, ...)`` accepts."""
    if isinstance(rule, AllOf | AnyOf):
        if not rule.rules:
            return true() if isinstance(rule, AllOf) else false()
        parts = [to_sql(child, columns) for child in rule.rules]
        if len(parts) == 1:
            return parts[0]
        return and_(*parts) if isinstance(rule, AllOf) else or_(*parts)
    if isinstance(rule, Not):
        return not_(to_sql(rule.rule, columns))
    if rule.fact.startswith(ATTRIBUTE_PREFIX):
        return _attribute(rule, columns.get("attributes"))
    kind = CATALOGUE[rule.fact].kind
    if kind is Kind.TAGS:
        return _tags(rule, columns.get("tags"))
    return _scalar(rule, columns.get(rule.fact), BigInteger() if kind is Kind.INTEGER else Text())


def days_since_sql(then: ColumnElement[Any], *, now: datetime | ColumnElement[Any]) -> ColumnElement[int]:
    """SQL for facts.days_since: whole elapsed days from ``then`` to ``now``, floored; NULL stays NULL."""
    now_sql = literal(now, DateTime(timezone=True)) if isinstance(now, datetime) else now
    # extract(epoch from interval) is an exact numeric, so floor() matches Python's // on timedeltas.
    return sql_cast(func.floor(extract("epoch", now_sql - then) / SECONDS_PER_DAY), BigInteger)


def _scalar(rule: Condition, column: ColumnElement[Any], type_: TypeEngine[Any]) -> ColumnElement[bool]:
    op, value = rule.op, rule.value
    if op == "is_set":
        return column.is_not(None)
    if op == "is_not_set":
        return column.is_(None)
    test: ColumnElement[bool]
    if op == "between" and isinstance(value, tuple):
        test = column.between(literal(value[0], type_), literal(value[1], type_))
    elif op in ("in", "not_in") and isinstance(value, tuple):
        array = literal(list(value), ARRAY(type_))
        test = column == any_(array) if op == "in" else column != all_(array)
    else:
        test = _compare(op, column, literal(value, type_))
    # NULL AND x is false when x is false and NULL otherwise; the guard makes it false always.
    return and_(column.is_not(None), test)


def _tags(rule: Condition, column: ColumnElement[Any]) -> ColumnElement[bool]:
    op, value = rule.op, rule.value
    if op in ("is_set", "is_not_set"):
        count = func.coalesce(func.cardinality(column), 0)
        return count > 0 if op == "is_set" else count == 0
    wanted = list(value) if isinstance(value, tuple) else [value]
    array = literal(wanted, ARRAY(Text()))
    # Explicit operators: SQLAlchemy's .contains() would be LIKE on a column not typed ARRAY.
    test = column.bool_op("&&")(array) if op == "contains_any" else column.bool_op("@>")(array)
    return and_(column.is_not(None), test)


def _attribute(rule: Condition, attributes: ColumnElement[Any]) -> ColumnElement[bool]:
    op, value = rule.op, rule.value
    # ->, not jsonb subscripting: -> gives NULL where a subscript could raise (e.g. on an array).
    node = type_coerce(attributes, JSONB).op("->", return_type=JSONB())(
        literal(attribute_key(rule.fact), Text)
    )
    json_type = func.jsonb_typeof(node)
    if op in ("is_set", "is_not_set"):
        # A key holding JSON null counts as not set, as in core.evaluate.
        present = func.coalesce(json_type, "null")
        return present != "null" if op == "is_set" else present == "null"
    first = value[0] if isinstance(value, tuple) else value
    expected = "boolean" if isinstance(first, bool) else "number" if isinstance(first, int) else "string"
    test: ColumnElement[bool]
    if op == "between" and isinstance(value, tuple):
        test = and_(node >= _jsonb(value[0]), node <= _jsonb(value[1]))
    elif op in ("in", "not_in") and isinstance(value, tuple):
        array = literal(list(value), ARRAY(JSONB))
        test = node == any_(array) if op == "in" else node != all_(array)
    else:
        test = _compare(op, node, _jsonb(value))
    # jsonb comparisons across JSON types follow jsonb's type order, not the rule's meaning: only
    # a value of the literal's type is compared. CASE leaves no NULL (missing key) unhandled.
    return case((json_type == expected, test), else_=false())


def _compare(op: str, left: ColumnElement[Any], right: ColumnElement[Any]) -> ColumnElement[bool]:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    raise ValueError(f"{op!r} is not a comparison: build rules with parse_rule")


def _jsonb(value: Any) -> ColumnElement[Any]:
    return literal(value, JSONB)
