"""Pure activity logic: formulas, caps, refunds, RFM and lifecycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.activity import core
from loyalty.errors import InvalidInput

RFM = {"recency_days": [7, 30, 90, 180], "frequency": [1, 2, 5, 10], "monetary": [100, 1_000, 5_000, 20_000]}


def test_per_unit_and_fixed() -> None:
    per_unit = core.parse_formula({"kind": "per_unit", "points": 2, "per": 100})
    assert core.points_for(per_unit, 12_345) == 246
    assert core.points_for(per_unit, 99) == 0
    assert core.points_for(core.parse_formula({"kind": "fixed", "points": 50}), None) == 50


def test_multiplier_is_exact_and_rounds_down() -> None:
    formula = core.parse_formula({"kind": "per_unit", "points": 1, "per": 100, "multiplier": "1.5"})
    assert core.points_for(formula, 1_010) == 15  # 10 x 1.5
    assert core.points_for(formula, 1_110) == 16  # 11 x 1.5 = 16.5
    tripled = core.parse_formula({"kind": "fixed", "points": 10, "multiplier": 3})
    assert core.points_for(tripled, None) == 30
    # 0.1 x 3 would be 0.30000000000000004 in floats; Fractions give exactly 3 for 10 x 0.1 x 3.
    tenth = core.parse_formula({"kind": "fixed", "points": 10, "multiplier": "0.1"})
    assert core.points_for(tenth, None, member_multiplier=Fraction(3)) == 3


def test_member_multiplier_hook() -> None:
    formula = core.parse_formula({"kind": "per_unit", "points": 1, "per": 100})
    assert core.points_for(formula, 10_000, member_multiplier=Fraction(5, 4)) == 125


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"kind": "per_unit", "points": 1}, "formula.per"),
        ({"kind": "fixed", "points": True}, "formula.points"),
        ({"kind": "fixed", "points": 1, "multiplier": 1.5}, "formula.multiplier"),
        ({"kind": "fixed", "points": 1, "multiplier": "0"}, "formula.multiplier"),
        ({"kind": "fixed", "points": 1, "multiplier": "1e3"}, "formula.multiplier"),
        ({"kind": "fixed", "points": 1, "per": 5}, "formula.per"),
        ("fixed", "formula"),
    ],
)
def test_bad_formulas(raw: object, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        core.parse_formula(raw)
    assert info.value.field == field


@given(st.integers(0, 10**9), st.integers(1, 10**4), st.integers(1, 10**4))
def test_per_unit_never_exceeds_the_real_value(amount: int, points: int, per: int) -> None:
    formula = core.Formula(kind="per_unit", points=points, per=per)
    assert core.points_for(formula, amount) * per <= amount * points


def test_caps() -> None:
    assert core.capped(100, [(150, 100), (None, 0)]) == 50
    assert core.capped(100, [(150, 0), (120, 100)]) == 20
    assert core.capped(100, [(50, 80)]) == 0
    assert core.capped(100, [(None, 10**9)]) == 100


@given(
    earned=st.integers(0, 10**6),
    amount=st.integers(1, 10**6),
    cuts=st.lists(st.integers(1, 10**6), min_size=0, max_size=5),
)
def test_partial_refunds_add_up_to_what_the_order_earned(earned: int, amount: int, cuts: list[int]) -> None:
    parts = sorted({c for c in cuts if c < amount})
    refunds = [b - a for a, b in zip([0, *parts], [*parts, amount], strict=True)]
    clawed = refunded = 0
    for refund in refunds:
        take = core.refund_clawback(
            earned=earned, clawed=clawed, order_amount=amount, refunded_before=refunded, refund=refund
        )
        assert take >= 0
        clawed += take
        refunded += refund
        assert clawed <= earned * refunded // amount or refunded == amount
    assert clawed == earned


def test_rfm_scores() -> None:
    assert core.rfm_scores(RFM, recency_days=3, orders=12, spend=25_000) == (5, 5, 5)
    assert core.rfm_scores(RFM, recency_days=7, orders=1, spend=100) == (5, 2, 2)
    assert core.rfm_scores(RFM, recency_days=8, orders=0, spend=0) == (4, 1, 1)
    assert core.rfm_scores(RFM, recency_days=181, orders=5, spend=4_999) == (1, 4, 3)
    assert core.rfm_scores(RFM, recency_days=None, orders=0, spend=0) == (1, 1, 1)
    assert core.rfm_scores({}, recency_days=3, orders=3, spend=3) == (None, None, None)


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_scores_are_monotone(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert core.score_recency(lo, RFM["recency_days"]) >= core.score_recency(hi, RFM["recency_days"])  # type: ignore[operator]
    assert core.score_higher_better(lo, RFM["monetary"]) <= core.score_higher_better(hi, RFM["monetary"])  # type: ignore[operator]


def test_lifecycle() -> None:
    lc = {"new_days": 30, "active_days": 90, "silent_days": 180}
    assert core.lifecycle_stage(lc, enrolment_days=5, recency_days=None) == "new"
    assert core.lifecycle_stage(lc, enrolment_days=29, recency_days=200) == "new"
    assert core.lifecycle_stage(lc, enrolment_days=400, recency_days=89) == "active"
    assert core.lifecycle_stage(lc, enrolment_days=400, recency_days=90) == "silent"
    assert core.lifecycle_stage(lc, enrolment_days=400, recency_days=179) == "silent"
    assert core.lifecycle_stage(lc, enrolment_days=400, recency_days=180) == "churned"
    assert core.lifecycle_stage(lc, enrolment_days=60, recency_days=None) == "active"  # idle since enrolment
    assert core.lifecycle_stage({}, enrolment_days=200, recency_days=None) == "churned"  # defaults


def test_occurred_at_and_types() -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    assert core.check_occurred_at(None, now) == now
    assert core.check_occurred_at(now + timedelta(minutes=4), now) == now + timedelta(minutes=4)
    with pytest.raises(InvalidInput):
        core.check_occurred_at(now + timedelta(hours=1), now)
    with pytest.raises(InvalidInput):
        core.check_occurred_at(datetime(2026, 1, 1), now)  # noqa: DTZ001 - naive on purpose
    core.check_event_type("signup", [])
    core.check_event_type("quiz", ["quiz"])
    with pytest.raises(InvalidInput):
        core.check_event_type("quiz", [])


def test_event_filter() -> None:
    event = {
        "amount": 5_000,
        "channel": "app",
        "currency": "CNY",
        "items": [{"sku": "a", "category": "shoes"}],
    }
    assert core.filter_miss({}, event) is None
    assert (
        core.filter_miss({"min_amount": 5_000, "channels": ["app"], "categories": ["shoes"]}, event) is None
    )
    assert "min_amount" in (core.filter_miss({"min_amount": 5_001}, event) or "")
    assert "skus" in (core.filter_miss({"skus": ["b"]}, event) or "")
    with pytest.raises(InvalidInput):
        core.check_event_filter({"channels": []})
