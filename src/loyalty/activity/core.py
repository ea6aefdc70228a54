"""Pure logic of member activity and earning rules: no database, no HTTP.

What is decided here: whether an event is acceptable, how many points a formula gives, how a
cap trims them, how much of an order a refund claws back, RFM scores and lifecycle stages. The
SQL of repository.refresh_facts computes RFM and lifecycle for many members at once with the
same definitions (tests/integration/test_activity_refresh.py compares the two).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any, Final
from zoneinfo import ZoneInfo

from loyalty.errors import InvalidInput

BUILTIN_EVENT_TYPES: Final = ("order_completed", "order_refunded", "signup", "review", "check_in")
ORDER_TYPES: Final = ("order_completed", "order_refunded")
EVENT_TYPE: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_FUTURE: Final = timedelta(minutes=5)  # clock skew we tolerate on occurred_at
MAX_POINTS: Final = 10**12
RFM_DIMENSIONS: Final = ("recency_days", "frequency", "monetary")
DEFAULT_LIFECYCLE: Final = {"new_days": 30, "active_days": 90, "silent_days": 180}
FILTER_KEYS: Final = frozenset({"min_amount", "max_amount", "channels", "currency", "categories", "skus"})


# The qualification window ------------------------------------------------------------------


def in_window(day: date, window_start: datetime | None, tz: str) -> bool:
    """Whether activity on ``day`` (local to the programme) counts in the window starting at
    ``window_start``: the same test as the refresh's ``day >= (window_start AT TIME ZONE tz)::date``,
    so that what an event adds to the window sums is what a rebuild of the facts finds."""
    return window_start is None or day >= window_start.astimezone(ZoneInfo(tz)).date()


# Formulas ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Formula:
    """``per_unit``: floor(amount / per) * points; ``fixed``: points. Then x multiplier."""

    kind: str
    points: int
    per: int = 1
    multiplier: Fraction = Fraction(1)


def parse_multiplier(raw: Any, field: str = "formula.multiplier") -> Fraction:
    """A decimal string ("1.5") or an integer; never a float (no binary rounding of money)."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise InvalidInput(field, 'must be an integer or a decimal string such as "1.5"')
    if isinstance(raw, str) and not re.fullmatch(r"\d{1,6}(\.\d{1,6})?", raw):
        raise InvalidInput(field, 'must be a decimal string such as "1.5" (up to 6 decimals)')
    value = Fraction(raw)
    if value <= 0 or value > 1000:
        raise InvalidInput(field, "must be above 0 and at most 1000")
    return value


def parse_formula(raw: Any) -> Formula:
    if not isinstance(raw, dict):
        raise InvalidInput("formula", "must be an object with a kind")
    kind = raw.get("kind")
    allowed = {"per_unit": {"kind", "points", "per", "multiplier"}, "fixed": {"kind", "points", "multiplier"}}
    if kind not in allowed:
        raise InvalidInput("formula.kind", "must be 'per_unit' or 'fixed'")
    unknown = sorted(set(raw) - allowed[kind])
    if unknown:
        raise InvalidInput(f"formula.{unknown[0]}", f"is not a field of a {kind} formula")
    points = raw.get("points")
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= MAX_POINTS:
        raise InvalidInput("formula.points", f"must be an integer from 1 to {MAX_POINTS}")
    per = 1
    if kind == "per_unit":
        per = raw.get("per")  # type: ignore[assignment]
        if isinstance(per, bool) or not isinstance(per, int) or not 1 <= per <= 10**12:
            raise InvalidInput("formula.per", "must be a positive integer (minor units of money)")
    multiplier = parse_multiplier(raw["multiplier"]) if "multiplier" in raw else Fraction(1)
    return Formula(kind=kind, points=points, per=per, multiplier=multiplier)


def points_for(formula: Formula, amount: int | None, *, member_multiplier: Fraction = Fraction(1)) -> int:
    """Points a formula gives for an event's amount (minor units), rounded down.

    ``member_multiplier`` is the hook for tier benefits ("gold earns x1.25"): the caller passes
    the member's multiplier (1 until benefits supply one); it multiplies like the formula's own,
    exactly, and the product is floored once at the end.
    """
    if formula.kind == "per_unit":
        base = (max(amount or 0, 0) // formula.per) * formula.points
    else:
        base = formula.points
    return int(base * formula.multiplier * member_multiplier)  # int() of a positive Fraction floors


# Caps, refunds -----------------------------------------------------------------------------


def capped(points: int, caps: list[tuple[int | None, int]]) -> int:
    """``points`` trimmed so that no (cap, already used) pair is exceeded; never below zero."""
    out = points
    for cap, used in caps:
        if cap is not None:
            out = min(out, max(cap - used, 0))
    return out


def refund_clawback(*, earned: int, clawed: int, order_amount: int, refunded_before: int, refund: int) -> int:
    """Points to claw back for a refund of ``refund`` out of an order of ``order_amount``.

    Proportional on the running total, so that partial refunds add up exactly to what the whole
    order earned: the target after this refund is floor(earned x refunded / order amount), and
    this refund takes the target minus what earlier refunds took.
    """
    if earned <= 0:
        return 0
    total = refunded_before + refund
    if order_amount <= 0 or total >= order_amount:
        return max(earned - clawed, 0)
    return max(earned * total // order_amount - clawed, 0)


# Events ------------------------------------------------------------------------------------


def check_occurred_at(occurred_at: datetime | None, now: datetime) -> datetime:
    if occurred_at is None:
        return now
    if occurred_at.tzinfo is None:
        raise InvalidInput("occurred_at", "must carry a time zone offset, e.g. 2026-01-01T00:00:00Z")
    if occurred_at > now + MAX_FUTURE:
        raise InvalidInput("occurred_at", "must not be in the future")
    return occurred_at


def check_event_type(event_type: str, custom_types: list[str]) -> None:
    if event_type not in BUILTIN_EVENT_TYPES and event_type not in custom_types:
        raise InvalidInput(
            "type", "is neither a built-in event type nor one the programme declares (activity settings)"
        )


def filter_miss(event_filter: dict[str, Any], event: dict[str, Any]) -> str | None:
    """Why the event does not pass a rule's event filter, or None when it does."""
    amount = event.get("amount") or 0
    if "min_amount" in event_filter and amount < event_filter["min_amount"]:
        return f"amount {amount} is below min_amount {event_filter['min_amount']}"
    if "max_amount" in event_filter and amount > event_filter["max_amount"]:
        return f"amount {amount} is above max_amount {event_filter['max_amount']}"
    if "channels" in event_filter and event.get("channel") not in event_filter["channels"]:
        return f"channel {event.get('channel')!r} is not one of {event_filter['channels']}"
    if "currency" in event_filter and event.get("currency") != event_filter["currency"]:
        return f"currency {event.get('currency')!r} is not {event_filter['currency']!r}"
    items = event.get("items") or []
    if "categories" in event_filter and not any(
        i.get("category") in event_filter["categories"] for i in items
    ):
        return f"no item in categories {event_filter['categories']}"
    if "skus" in event_filter and not any(i.get("sku") in event_filter["skus"] for i in items):
        return f"no item with skus {event_filter['skus']}"
    return None


def check_event_filter(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput("event_filter", "must be an object")
    for key, value in raw.items():
        field = f"event_filter.{key}"
        if key not in FILTER_KEYS:
            raise InvalidInput(field, f"is not a filter; filters are {sorted(FILTER_KEYS)}")
        if key in ("min_amount", "max_amount"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(field, "must be a non-negative integer (minor units)")
        elif key == "currency":
            if not isinstance(value, str) or not re.fullmatch(r"[A-Z]{3}", value):
                raise InvalidInput(field, "must be an ISO 4217 code such as 'CNY'")
        elif (
            not isinstance(value, list)
            or not value
            or len(value) > 100
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise InvalidInput(field, "must be a non-empty list of strings (at most 100)")
    return raw


# RFM and lifecycle -------------------------------------------------------------------------


def check_cuts(field: str, cuts: Any) -> list[int]:
    if (
        not isinstance(cuts, list)
        or len(cuts) != 4
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cuts)
        or any(a >= b for a, b in zip(cuts, cuts[1:], strict=False))
    ):
        raise InvalidInput(field, "must be 4 strictly ascending non-negative integers")
    return cuts


def score_higher_better(value: int, cuts: list[int] | None) -> int | None:
    """1..5: one more for each cut point the value reaches (frequency, monetary)."""
    if cuts is None:
        return None
    return 1 + sum(1 for c in cuts if value >= c)


def score_recency(days: int | None, cuts: list[int] | None) -> int | None:
    """5..1: fewer days since the last order score higher; never ordered scores 1."""
    if cuts is None:
        return None
    if days is None:
        return 1
    return 5 - sum(1 for c in cuts if days > c)


def rfm_scores(
    rfm: dict[str, Any], *, recency_days: int | None, orders: int, spend: int
) -> tuple[int | None, int | None, int | None]:
    """Scores over the window's orders and spend, by the programme's cut points."""
    return (
        score_recency(recency_days, rfm.get("recency_days")),
        score_higher_better(orders, rfm.get("frequency")),
        score_higher_better(spend, rfm.get("monetary")),
    )


def lifecycle_thresholds(lifecycle: dict[str, Any]) -> dict[str, int]:
    return {**DEFAULT_LIFECYCLE, **lifecycle}


def lifecycle_stage(lifecycle: dict[str, Any], *, enrolment_days: int, recency_days: int | None) -> str:
    """new: enrolled less than new_days ago. Otherwise by days since the last order (since
    enrolment if none): under active_days active, under silent_days silent, else churned."""
    t = lifecycle_thresholds(lifecycle)
    if enrolment_days < t["new_days"]:
        return "new"
    idle = enrolment_days if recency_days is None else recency_days
    if idle < t["active_days"]:
        return "active"
    if idle < t["silent_days"]:
        return "silent"
    return "churned"


def check_settings(
    *, window_kind: str, window_months: int, rfm: dict[str, Any], lifecycle: dict[str, Any], custom: list[str]
) -> None:
    if window_kind not in ("rolling_months", "calendar_year", "anniversary"):
        raise InvalidInput("window_kind", "must be rolling_months, calendar_year or anniversary")
    if not 1 <= window_months <= 60:
        raise InvalidInput("window_months", "must be from 1 to 60")
    for key in rfm:
        if key not in RFM_DIMENSIONS:
            raise InvalidInput(f"rfm.{key}", f"is not a dimension; dimensions are {list(RFM_DIMENSIONS)}")
        check_cuts(f"rfm.{key}", rfm[key])
    for key, value in lifecycle.items():
        if key not in DEFAULT_LIFECYCLE:
            raise InvalidInput(
                f"lifecycle.{key}", f"is not a threshold; thresholds are {list(DEFAULT_LIFECYCLE)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650:
            raise InvalidInput(f"lifecycle.{key}", "must be whole days from 1 to 3650")
    t = lifecycle_thresholds(lifecycle)
    if not t["active_days"] < t["silent_days"]:
        raise InvalidInput("lifecycle.silent_days", "must be greater than active_days")
    for i, name in enumerate(custom):
        if not EVENT_TYPE.fullmatch(name):
            raise InvalidInput(f"custom_event_types[{i}]", "must be lowercase letters, digits and _")
        if name in BUILTIN_EVENT_TYPES:
            raise InvalidInput(f"custom_event_types[{i}]", "is a built-in event type")
    if len(set(custom)) != len(custom):
        raise InvalidInput("custom_event_types", "must not repeat a type")
