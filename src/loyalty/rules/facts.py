"""The fact catalogue: what a rule may ask about a member, and how.

A fact has a kind, and the kind decides which operators apply and what literal they take.
``Facts`` holds one member's values for the in-memory evaluation; the SQL side reads the same
facts from columns the caller supplies (rules/sql.py).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

Op = Literal[
    "==",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "between",
    "in",
    "not_in",
    "contains",
    "contains_any",
    "contains_all",
    "is_set",
    "is_not_set",
]
OPS: Final[tuple[Op, ...]] = (
    "==",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "between",
    "in",
    "not_in",
    "contains",
    "contains_any",
    "contains_all",
    "is_set",
    "is_not_set",
)
ORDERING_OPS: Final[frozenset[Op]] = frozenset({">", ">=", "<", "<=", "between"})
LIST_OPS: Final[frozenset[Op]] = frozenset({"in", "not_in", "contains_any", "contains_all"})
PRESENCE_OPS: Final[frozenset[Op]] = frozenset({"is_set", "is_not_set"})


class Kind(enum.Enum):
    INTEGER = "integer"  # int or null; money in minor units
    ENUM = "enum"  # text or null, compared for equality only
    TAGS = "tags"  # a set of strings, never null (no tags = the empty set)
    ATTRIBUTE = "attribute"  # one key of the member's CRM attributes: any JSON value, or missing


OPS_BY_KIND: Final[Mapping[Kind, frozenset[Op]]] = {
    Kind.INTEGER: frozenset(
        {"==", "!=", ">", ">=", "<", "<=", "between", "in", "not_in", "is_set", "is_not_set"}
    ),
    Kind.ENUM: frozenset({"==", "!=", "in", "not_in", "is_set", "is_not_set"}),
    Kind.TAGS: frozenset({"contains", "contains_any", "contains_all", "is_set", "is_not_set"}),
    Kind.ATTRIBUTE: frozenset(
        {"==", "!=", ">", ">=", "<", "<=", "between", "in", "not_in", "is_set", "is_not_set"}
    ),
}

LIFECYCLES: Final[tuple[str, ...]] = ("new", "active", "silent", "churned")


@dataclass(frozen=True, slots=True)
class FactSpec:
    name: str
    kind: Kind
    description: str
    choices: tuple[str, ...] | None = None  # the only legal literals of an enum fact, if closed


INTEGER_FACTS: Final[tuple[FactSpec, ...]] = (
    FactSpec("qualifying_points", Kind.INTEGER, "points that count towards tier qualification"),
    FactSpec("spend", Kind.INTEGER, "spend in the qualification period, minor units"),
    FactSpec("orders", Kind.INTEGER, "orders in the qualification period"),
    FactSpec("lifetime_points", Kind.INTEGER, "points ever earned"),
    FactSpec("lifetime_spend", Kind.INTEGER, "spend ever, minor units"),
    FactSpec("lifetime_orders", Kind.INTEGER, "orders ever"),
    FactSpec("recency_days", Kind.INTEGER, "whole days since the last order; null if never ordered"),
    FactSpec("enrolment_days", Kind.INTEGER, "whole days since enrolment"),
    FactSpec("recency_score", Kind.INTEGER, "RFM recency score 1..5; null if not scored"),
    FactSpec("frequency_score", Kind.INTEGER, "RFM frequency score 1..5; null if not scored"),
    FactSpec("monetary_score", Kind.INTEGER, "RFM monetary score 1..5; null if not scored"),
)

CATALOGUE: Final[Mapping[str, FactSpec]] = {
    spec.name: spec
    for spec in (
        *INTEGER_FACTS,
        FactSpec("lifecycle", Kind.ENUM, "lifecycle stage", choices=LIFECYCLES),
        FactSpec("tier", Kind.ENUM, "code of the member's current tier; null if none"),
        FactSpec("tags", Kind.TAGS, "the member's tags"),
    )
}

ATTRIBUTE_PREFIX: Final = "attributes."
ATTRIBUTE_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def lookup(name: str) -> FactSpec | None:
    """The spec of a fact name, ``attributes.<key>`` included; None if there is no such fact."""
    spec = CATALOGUE.get(name)
    if spec is not None:
        return spec
    if name.startswith(ATTRIBUTE_PREFIX) and ATTRIBUTE_KEY.fullmatch(name[len(ATTRIBUTE_PREFIX) :]):
        return FactSpec(name, Kind.ATTRIBUTE, "a CRM attribute")
    return None


def attribute_key(name: str) -> str:
    """The attribute key of an ``attributes.<key>`` fact name."""
    return name[len(ATTRIBUTE_PREFIX) :]


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """One member's facts, as the in-memory evaluation reads them.

    The derived facts (recency_days, enrolment_days) come computed, with ``days_since`` so that
    they match the SQL side's ``days_since_sql``. Numeric attributes agree exactly with
    PostgreSQL when they are ints or Decimals (decode with ``float_hook=Decimal``); a float is
    taken at its shortest repr, which is what JSON encoders write.
    """

    qualifying_points: int | None = None
    spend: int | None = None
    orders: int | None = None
    lifetime_points: int | None = None
    lifetime_spend: int | None = None
    lifetime_orders: int | None = None
    recency_days: int | None = None
    enrolment_days: int | None = None
    recency_score: int | None = None
    frequency_score: int | None = None
    monetary_score: int | None = None
    lifecycle: str | None = None
    tier: str | None = None
    tags: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """The member's value of a catalogue fact (not of an attribute); None when not set."""
        if name not in CATALOGUE:
            raise KeyError(name)
        return getattr(self, name)


def days_since(then: datetime | None, *, now: datetime) -> int | None:
    """Whole elapsed days (24 h each, floored) from ``then`` to ``now``; None if ``then`` is None.

    Elapsed time rather than calendar days: it needs no time zone, and SQL computes the same.
    """
    if then is None:
        return None
    return (now - then) // timedelta(days=1)
