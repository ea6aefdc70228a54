"""The pure benefit logic: parameters, periods, the best source and the checkout decision."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.benefits import core
from loyalty.errors import InvalidInput

QUOTA = core.BenefitDef(id=1, code="q", type="quota", params={"limit": 3, "period": "month"})


def test_params_are_checked_by_type() -> None:
    assert core.check_params("multiplier", {"factor": "1.5"}) == {"factor": "1.5"}
    with pytest.raises(InvalidInput) as exc:
        core.check_params("quota", {"limit": 2, "period": "fortnight"})
    assert exc.value.field == "params.period"
    with pytest.raises(InvalidInput):
        core.check_params("discount", {"percent": 10, "amount": 5})
    with pytest.raises(InvalidInput):
        core.check_params("multiplier", {"factor": 1.5})  # a float is refused: decimal strings only
    assert core.multiplier_of({"factor": "1.25"}) == Fraction(5, 4)


def test_period_bounds_in_the_programme_time_zone() -> None:
    # 2026-12-31 20:00 UTC is already 2027-01-01 in Shanghai.
    now = datetime(2026, 12, 31, 20, tzinfo=UTC)
    start, resets = core.period_bounds("year", now, "Asia/Shanghai")
    assert start == date(2027, 1, 1)
    assert resets.year == 2028
    start, resets = core.period_bounds("week", datetime(2026, 11, 22, tzinfo=UTC), "UTC")
    assert start == date(2026, 11, 16)  # Monday
    assert resets == datetime(2026, 11, 23, tzinfo=UTC)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_now_is_inside_its_period(now: datetime) -> None:
    for period in core.PERIODS:
        start, resets = core.period_bounds(period, now, "Asia/Shanghai")
        assert now < resets
        assert resets - now <= timedelta(days=366)
        assert start <= now.astimezone(resets.tzinfo).date()


def test_best_source_takes_the_largest_quota_then_the_most_specific() -> None:
    tier = core.Source("tier", "gold", {"limit": 5})
    grant = core.Source("grant", "7", {"limit": 5})
    campaign = core.Source("segment", "spring", {"limit": 2})
    assert core.best_source("quota", [campaign, tier, grant]) == grant
    assert core.best_source("quota", [campaign, core.Source("tier", "gold", {"limit": 9})]).ref == "gold"


def test_decide() -> None:
    now = datetime(2026, 11, 22, tzinfo=UTC)
    source = [core.Source("tier", "gold", {})]
    assert core.decide(QUOTA, [], used=0, now=now, tz="UTC", channel=None).reason == "not_entitled"
    ok = core.decide(QUOTA, source, used=2, now=now, tz="UTC", channel=None)
    assert (ok.allowed, ok.remaining, ok.resets_at) == (True, 1, datetime(2026, 12, 1, tzinfo=UTC))
    assert core.decide(QUOTA, source, used=3, now=now, tz="UTC", channel=None).reason == "quota_exhausted"
    app_only = core.BenefitDef(id=2, code="f", type="flag", params={}, channels=("app",))
    assert (
        core.decide(app_only, source, used=0, now=now, tz="UTC", channel="web").reason
        == "channel_not_allowed"
    )
    expired = core.BenefitDef(id=3, code="f", type="flag", params={}, valid_until=now)
    assert core.decide(expired, source, used=0, now=now, tz="UTC", channel=None).reason == "benefit_expired"


def test_birthday() -> None:
    assert core.birthday_due("11-22", date(2026, 11, 22))
    assert core.birthday_due("1990-11-22", date(2026, 11, 22))
    assert core.birthday_due("02-29", date(2026, 2, 28))
    assert not core.birthday_due("02-29", date(2028, 2, 28))
    assert not core.birthday_due(None, date(2026, 11, 22))
