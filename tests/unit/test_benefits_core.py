"""The pure benefit logic: parameters, periods, the best source and the checkout decision."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

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
    # Local midnight of 2028-01-01 in Shanghai, given in UTC.
    assert resets == datetime(2027, 12, 31, 16, tzinfo=UTC) and resets.tzinfo is UTC
    start, resets = core.period_bounds("week", datetime(2026, 11, 22, tzinfo=UTC), "UTC")
    assert start == date(2026, 11, 16)  # Monday
    assert resets == datetime(2026, 11, 23, tzinfo=UTC)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_now_is_inside_its_period(now: datetime) -> None:
    for period in core.PERIODS:
        start, resets = core.period_bounds(period, now, "Asia/Shanghai")
        assert now < resets
        assert resets - now <= timedelta(days=366)
        assert start <= now.astimezone(ZoneInfo("Asia/Shanghai")).date()
        assert resets.astimezone(ZoneInfo("Asia/Shanghai")).time() == time(0)


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


# Upgrades ------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, tzinfo=UTC)
RANKS = {"bronze": 0, "silver": 1, "gold": 2}
TO_GOLD = core.BenefitDef(id=10, code="to-gold", type="upgrade", params={"tier": "gold"})
LOUNGE = core.BenefitDef(id=11, code="lounge", type="flag", params={})
RETURNS = core.BenefitDef(id=12, code="returns", type="quota", params={"limit": 1, "period": "month"})


def _lifts(upgrade: core.BenefitDef, source: core.Source, rank: int = 1) -> list[core.Lift]:
    return core.lifts([(upgrade, source)], rank=rank, ranks=RANKS, now=NOW)


def test_an_upgrade_lifts_only_above_the_members_own_tier_and_on_the_ladder() -> None:
    grant = core.Source("grant", "7", {}, until=NOW + timedelta(days=3))
    assert [(x.tier, x.upgrade.code) for x in _lifts(TO_GOLD, grant, rank=1)] == [("gold", "to-gold")]
    assert _lifts(TO_GOLD, grant, rank=2) == []  # already gold: adds nothing
    assert _lifts(TO_GOLD, core.Source("grant", "7", {"tier": "bronze"}), rank=0) == []  # not above
    assert _lifts(TO_GOLD, core.Source("grant", "7", {"tier": "diamond"}), rank=0) == []  # not on it
    # The source's override wins over the upgrade's default tier.
    assert [x.tier for x in _lifts(TO_GOLD, core.Source("grant", "7", {"tier": "silver"}), rank=0)] == [
        "silver"
    ]
    inactive = core.BenefitDef(id=10, code="to-gold", type="upgrade", params={"tier": "gold"}, active=False)
    assert _lifts(inactive, grant, rank=0) == []
    expired = core.BenefitDef(id=10, code="to-gold", type="upgrade", params={"tier": "gold"}, valid_until=NOW)
    assert _lifts(expired, grant, rank=0) == []


def test_member_rank_reads_the_ladder_in_force() -> None:
    assert core.member_rank(None, None, RANKS) == 0  # no tier row: the base tier
    assert core.member_rank("gold", 0, RANKS) == 2  # the ladder's rank, not a stale stored one
    assert core.member_rank("platinum", 3, RANKS) == 3  # gone from the ladder: the stored rank


def test_through_upgrades_names_the_upgrade_and_never_chains() -> None:
    grant = core.Source("grant", "7", {}, until=NOW + timedelta(days=3))
    lifts = _lifts(TO_GOLD, grant, rank=1)
    includes = {"gold": {"limit": 5}, "silver": {"limit": 3}}
    (source,) = core.through_upgrades(RETURNS, lifts, includes)
    assert (source.kind, source.ref, source.tier, source.params) == (
        "upgrade",
        "to-gold",
        "gold",
        {"limit": 5},
    )
    assert (source.via, source.until) == (grant, grant.until)
    assert core.through_upgrades(RETURNS, lifts, {"silver": {"limit": 3}}) == []  # gold lacks it
    to_silver = core.BenefitDef(id=13, code="to-silver", type="upgrade", params={"tier": "silver"})
    assert core.through_upgrades(to_silver, lifts, {"gold": {}}) == []  # no upgrade through upgrades


def test_an_upgrade_never_lowers_what_the_member_has() -> None:
    own = core.Source("tier", "silver", {"limit": 8})
    lifted = core.through_upgrades(
        RETURNS, _lifts(TO_GOLD, core.Source("grant", "7", {})), {"gold": {"limit": 5}}
    )
    assert core.best_source("quota", [own, *lifted], RETURNS.params) == own
    better = core.through_upgrades(
        RETURNS, _lifts(TO_GOLD, core.Source("grant", "7", {})), {"gold": {"limit": 9}}
    )
    assert core.best_source("quota", [own, *better], RETURNS.params) == better[0]
    # On a tie the member's own source is shown.
    same = core.through_upgrades(LOUNGE, _lifts(TO_GOLD, core.Source("grant", "7", {})), {"gold": {}})
    assert core.best_source("flag", [*same, core.Source("tier", "silver", {})]).kind == "tier"


def test_announcement_of_a_started_campaign() -> None:
    later = NOW + timedelta(days=1)
    assert core.announcement(LOUNGE, later, NOW) == "announce"
    assert core.announcement(LOUNGE, NOW, NOW) == "skip"  # ended: gives nobody anything any more
    expired = core.BenefitDef(id=11, code="lounge", type="flag", params={}, valid_until=NOW)
    assert core.announcement(expired, later, NOW) == "skip"
    inactive = core.BenefitDef(id=11, code="lounge", type="flag", params={}, active=False)
    assert core.announcement(inactive, later, NOW) == "wait"
    not_yet = core.BenefitDef(id=11, code="lounge", type="flag", params={}, valid_from=later)
    assert core.announcement(not_yet, later + timedelta(days=1), NOW) == "wait"
