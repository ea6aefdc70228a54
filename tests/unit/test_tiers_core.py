"""Pure tier decisions: promotion, retention, grace, demotion, pins, validity arithmetic."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty.errors import InvalidInput
from loyalty.tiers import core
from loyalty.tiers.core import Ladder, Pin, RuleOutcome, Tier, TierState, Validity

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
YEAR = Validity(12)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def four_tiers(*, policy: core.DowngradePolicy = "one_step", grace_days: int = 0) -> Ladder:
    # Deliberately out of order: the ladder sorts by rank.
    return Ladder(
        (
            Tier("gold", 2, YEAR, policy, grace_days),
            Tier("member", 0),
            Tier("platinum", 3, YEAR, policy, grace_days),
            Tier("silver", 1, YEAR, policy, grace_days),
        )
    )


def outcomes(*, entry: Collection[str] = (), retention: Collection[str] = ()) -> dict[str, RuleOutcome[str]]:
    return {
        code: RuleOutcome(
            entry_met=code in entry,
            retention_met=code in retention,
            entry_explanation=f"{code} entry",
            retention_explanation=f"{code} retention",
        )
        for code in ("silver", "gold", "platinum")
    }


def holding(
    code: str,
    *,
    valid_until: datetime | None,
    grace_until: datetime | None = None,
    pin: Pin | None = None,
) -> TierState:
    return TierState(code, utc(2025, 1, 1), valid_until, grace_until, pin)


def decide(
    state: TierState | None,
    rules: Mapping[str, RuleOutcome[str]],
    *,
    now: datetime = NOW,
    trigger: core.Trigger = "scheduled",
    ladder: Ladder | None = None,
) -> core.TierDecision[str]:
    return core.decide(ladder=ladder or four_tiers(), state=state, outcomes=rules, now=now, trigger=trigger)


# --- promotion --------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["event", "scheduled"])
def test_promotion_skips_straight_to_the_highest_tier_whose_entry_rule_is_met(
    trigger: core.Trigger,
) -> None:
    # Silver and gold entry met, platinum not: a base member lands on gold in one step.
    decision = decide(None, outcomes(entry={"silver", "gold"}), trigger=trigger)

    assert (decision.kind, decision.reason) == ("promoted", "entry_rule_met")
    assert (decision.from_tier, decision.to_tier, decision.decided_by_tier) == ("member", "gold", "gold")
    assert decision.achieved_at == NOW
    assert decision.valid_until == utc(2027, 3, 15, 12)
    assert decision.next_assessment_at == utc(2027, 3, 15, 12)
    assert decision.explanations == (core.RuleVerdict("gold", "entry", True, "gold entry"),)


def test_promotion_ends_grace_and_restarts_validity() -> None:
    state = holding("silver", valid_until=NOW - timedelta(days=3), grace_until=NOW + timedelta(days=10))

    decision = decide(state, outcomes(entry={"platinum"}), trigger="event")

    assert (decision.kind, decision.to_tier) == ("promoted", "platinum")
    assert decision.grace_until is None
    assert decision.valid_until == utc(2027, 3, 15, 12)


def test_a_new_member_without_qualifying_stays_on_the_base_tier_for_ever() -> None:
    decision = decide(None, outcomes(), trigger="event")

    assert (decision.kind, decision.reason, decision.to_tier) == ("unchanged", "no_change", "member")
    assert decision.valid_until is None and decision.next_assessment_at is None


# --- events only promote ----------------------------------------------------------------------


def test_an_event_never_demotes_renews_or_starts_grace() -> None:
    ladder = four_tiers(grace_days=30)
    ended = holding("gold", valid_until=NOW - timedelta(days=1))

    not_met = decide(ended, outcomes(entry={"silver"}), trigger="event", ladder=ladder)
    met = decide(ended, outcomes(retention={"gold"}), trigger="event", ladder=ladder)

    for decision in (not_met, met):
        assert (decision.kind, decision.reason, decision.to_tier) == ("unchanged", "no_change", "gold")
        assert decision.valid_until == ended.valid_until and decision.grace_until is None


# --- validity end: retention, grace, demotion -------------------------------------------------


def test_validity_end_with_retention_met_renews_from_now() -> None:
    state = holding("gold", valid_until=NOW - timedelta(hours=2))

    decision = decide(state, outcomes(retention={"gold"}))

    assert (decision.kind, decision.reason, decision.to_tier) == ("retained", "retention_rule_met", "gold")
    assert decision.valid_until == utc(2027, 3, 15, 12)
    assert decision.achieved_at == state.achieved_at  # still the day gold was first reached
    assert decision.explanations == (core.RuleVerdict("gold", "retention", True, "gold retention"),)


def test_meeting_the_entry_rule_of_the_current_tier_also_retains_it() -> None:
    decision = decide(holding("gold", valid_until=NOW), outcomes(entry={"silver", "gold"}))

    assert (decision.kind, decision.reason, decision.decided_by_tier) == (
        "retained",
        "entry_rule_met",
        "gold",
    )


def test_before_the_validity_ends_a_scheduled_run_changes_nothing() -> None:
    state = holding("gold", valid_until=NOW + timedelta(seconds=1))

    decision = decide(state, outcomes())

    assert (decision.kind, decision.reason) == ("unchanged", "no_change")
    assert decision.next_assessment_at == state.valid_until


@pytest.mark.parametrize(
    ("policy", "lands_on"),
    [
        # Platinum lost, only silver's rules met: one step down is gold regardless ...
        ("one_step", "gold"),
        # ... while "to_qualified" drops to silver, the highest tier still qualified for.
        ("to_qualified", "silver"),
    ],
)
def test_grace_then_demotion_one_step_versus_to_qualified(
    policy: core.DowngradePolicy, lands_on: str
) -> None:
    ladder = four_tiers(policy=policy, grace_days=30)
    rules = outcomes(retention={"silver"})
    valid_until = utc(2026, 3, 1)

    ended = decide(holding("platinum", valid_until=valid_until), rules, ladder=ladder)
    assert (ended.kind, ended.reason, ended.to_tier) == ("grace_started", "validity_ended_grace", "platinum")
    assert ended.grace_until == NOW + timedelta(days=30)  # counted from the assessment
    assert ended.valid_until == valid_until
    assert ended.next_assessment_at == ended.grace_until

    halfway = decide(ended.new_state, rules, ladder=ladder, now=NOW + timedelta(days=15))
    assert (halfway.kind, halfway.reason, halfway.to_tier) == ("unchanged", "in_grace", "platinum")

    grace_over = NOW + timedelta(days=30)
    demoted = decide(halfway.new_state, rules, ladder=ladder, now=grace_over)
    assert (demoted.kind, demoted.reason) == ("demoted", "grace_ended")
    assert (demoted.from_tier, demoted.to_tier, demoted.decided_by_tier) == ("platinum", lands_on, "platinum")
    assert demoted.achieved_at == grace_over
    assert demoted.valid_until == grace_over.replace(year=2027)  # the landing tier counts as reached
    assert demoted.grace_until is None


def test_to_qualified_with_nothing_met_drops_to_the_base_tier() -> None:
    ladder = four_tiers(policy="to_qualified")

    decision = decide(holding("platinum", valid_until=NOW), outcomes(), ladder=ladder)

    assert (decision.kind, decision.reason, decision.to_tier) == ("demoted", "validity_ended", "member")
    assert decision.valid_until is None and decision.next_assessment_at is None


def test_to_qualified_explains_both_the_lost_tier_and_the_landing_tier() -> None:
    ladder = four_tiers(policy="to_qualified")

    decision = decide(holding("platinum", valid_until=NOW), outcomes(entry={"silver"}), ladder=ladder)

    assert decision.explanations == (
        core.RuleVerdict("platinum", "retention", False, "platinum retention"),
        core.RuleVerdict("platinum", "entry", False, "platinum entry"),
        core.RuleVerdict("silver", "entry", True, "silver entry"),
    )


def test_meeting_retention_during_grace_keeps_the_tier_at_the_next_run() -> None:
    state = holding("gold", valid_until=NOW - timedelta(days=10), grace_until=NOW + timedelta(days=20))

    decision = decide(state, outcomes(retention={"gold"}), ladder=four_tiers(grace_days=30))

    assert (decision.kind, decision.to_tier, decision.grace_until) == ("retained", "gold", None)


# --- pins -------------------------------------------------------------------------------------


def test_a_floor_pin_holds_the_tier_until_it_expires_then_the_rules_take_over() -> None:
    ladder = four_tiers(grace_days=30)
    pin_until = NOW + timedelta(days=60)
    pin = Pin("floor", "gold", pin_until, reason="complaint #81")
    state = holding("gold", valid_until=NOW - timedelta(days=1), pin=pin)

    held = decide(state, outcomes(), ladder=ladder)
    # No grace either: it would run out under the pin and leave none for afterwards.
    assert (held.kind, held.reason, held.to_tier, held.decided_by_tier) == (
        "pinned",
        "pin_floor",
        "gold",
        "gold",
    )
    assert held.new_state == state
    assert held.pin == pin and not held.pin_expired
    assert held.next_assessment_at == pin_until

    lapsed = decide(held.new_state, outcomes(), ladder=ladder, now=pin_until)
    assert lapsed.pin_expired and lapsed.pin == pin  # reported, with its reason, for the audit
    assert (lapsed.kind, lapsed.to_tier) == ("grace_started", "gold")
    assert lapsed.new_state.pin is None

    demoted = decide(lapsed.new_state, outcomes(), ladder=ladder, now=pin_until + timedelta(days=30))
    assert (demoted.kind, demoted.reason, demoted.to_tier) == ("demoted", "grace_ended", "silver")


def test_a_floor_pin_does_not_stop_promotion_nor_demotion_down_to_it() -> None:
    pin = Pin("floor", "silver", NOW + timedelta(days=60))

    promoted = decide(holding("silver", valid_until=None, pin=pin), outcomes(entry={"gold"}), trigger="event")
    assert (promoted.kind, promoted.to_tier) == ("promoted", "gold")

    demoted = decide(holding("gold", valid_until=NOW, pin=pin), outcomes())
    assert (demoted.kind, demoted.to_tier) == ("demoted", "silver")


def test_a_floor_pin_catches_a_to_qualified_demotion_at_the_floor() -> None:
    pin = Pin("floor", "gold", NOW + timedelta(days=60))
    state = holding("platinum", valid_until=NOW, pin=pin)

    decision = decide(state, outcomes(), ladder=four_tiers(policy="to_qualified"))

    assert (decision.kind, decision.reason, decision.to_tier) == ("pinned", "pin_floor", "gold")
    # Gold is only the pin's: it holds while the pin does, then the rules look again.
    assert decision.achieved_at == NOW and decision.valid_until == pin.until


@pytest.mark.parametrize("trigger", ["event", "scheduled"])
def test_a_floor_pin_raises_a_member_below_it(trigger: core.Trigger) -> None:
    pin = Pin("floor", "gold", None, reason="status match")

    decision = decide(holding("member", valid_until=None, pin=pin), outcomes(), trigger=trigger)

    assert (decision.kind, decision.reason, decision.to_tier) == ("pinned", "pin_floor", "gold")
    # An open-ended pin: gold runs its own validity, re-assessed under the pin when it ends.
    assert decision.valid_until == utc(2027, 3, 15, 12)


@pytest.mark.parametrize("trigger", ["event", "scheduled"])
def test_a_fixed_pin_blocks_promotion(trigger: core.Trigger) -> None:
    pin = Pin("fixed", "silver", NOW + timedelta(days=10), reason="fraud review")
    state = holding("silver", valid_until=NOW + timedelta(days=100), pin=pin)

    decision = decide(state, outcomes(entry={"silver", "gold", "platinum"}), trigger=trigger)

    assert (decision.kind, decision.reason, decision.to_tier) == ("pinned", "pin_fixed", "silver")
    assert decision.new_state == state
    assert decision.next_assessment_at == pin.until


def test_a_fixed_pin_blocks_demotion_and_lowers_only_on_a_scheduled_run() -> None:
    pin = Pin("fixed", "silver", None)
    state = holding("platinum", valid_until=NOW - timedelta(days=1), pin=pin)

    on_event = decide(state, outcomes(), trigger="event")
    assert (on_event.kind, on_event.to_tier) == ("pinned", "platinum")

    scheduled = decide(state, outcomes())
    assert (scheduled.kind, scheduled.reason, scheduled.to_tier) == ("pinned", "pin_fixed", "silver")


def test_an_expired_fixed_pin_lets_promotion_happen() -> None:
    pin = Pin("fixed", "silver", NOW)
    decision = decide(holding("silver", valid_until=None, pin=pin), outcomes(entry={"gold"}), trigger="event")

    assert decision.pin_expired
    assert (decision.kind, decision.to_tier) == ("promoted", "gold")
    assert decision.new_state.pin is None


# --- validity arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("validity", "start", "end"),
    [
        (Validity(1), utc(2024, 1, 31, 9), utc(2024, 2, 29, 9)),  # leap year
        (Validity(1), utc(2025, 1, 31, 9), utc(2025, 2, 28, 9)),
        (Validity(12), utc(2024, 2, 29, 9), utc(2025, 2, 28, 9)),
        (Validity(3), utc(2026, 11, 30, 9), utc(2027, 2, 28, 9)),  # across the year
        (Validity(1, "month"), utc(2025, 1, 31, 9), utc(2025, 3, 1)),  # the whole of 28 Feb
        (Validity(1, "month"), utc(2026, 1, 1), utc(2026, 3, 1)),
        # "Until the end of the next calendar year".
        (Validity(12, "year"), utc(2026, 3, 15, 9), utc(2028, 1, 1)),
        (Validity(12, "year"), utc(2026, 12, 31, 23), utc(2028, 1, 1)),
        (Validity(None), utc(2026, 3, 15), None),
        (Validity(None, "year"), utc(2026, 3, 15), None),
    ],
)
def test_validity_end(validity: Validity, start: datetime, end: datetime | None) -> None:
    assert core.validity_end(Tier("gold", 1, validity), start) == end


def test_month_ends_fall_on_local_midnight_in_the_programme_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 31 January 23:30 UTC is already 1 February in Berlin: one month on is 1 March, so end of March.
    end = core.validity_end(
        Tier("gold", 1, Validity(1, "month")), utc(2025, 1, 31, 23, 30), tz="Europe/Berlin"
    )

    assert end == datetime(2025, 4, 1, tzinfo=berlin)
    assert end is not None and end.tzinfo is UTC


def test_validity_end_wants_an_aware_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        core.validity_end(Tier("gold", 1, YEAR), datetime(2026, 1, 1))


def test_next_tier_target() -> None:
    ladder = four_tiers()

    assert core.next_tier_target(ladder, "member") == ladder.tier("silver")
    assert core.next_tier_target(ladder, "gold") == ladder.tier("platinum")
    assert core.next_tier_target(ladder, "platinum") is None


# --- input checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "field"),
    [
        ((), "tiers"),
        ((Tier("member", 0), Tier("member", 1)), "tiers"),
        ((Tier("member", 0), Tier("gold", 0)), "tiers"),
        ((Tier("silver", 1),), "tiers"),
        ((Tier("member", 0, YEAR),), "tiers[member].validity"),
        ((Tier("member", 0, grace_days=7),), "tiers[member].grace_days"),
    ],
)
def test_a_broken_ladder_is_refused(tiers: tuple[Tier, ...], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        Ladder(tiers)
    assert refused.value.field == field


def test_broken_tiers_are_refused() -> None:
    with pytest.raises(InvalidInput):
        Validity(0)
    with pytest.raises(InvalidInput):
        Tier("gold", -1)
    with pytest.raises(InvalidInput):
        Tier("gold", 1, grace_days=-1)


def test_every_tier_but_the_base_needs_an_outcome() -> None:
    rules = outcomes()
    del rules["gold"]
    with pytest.raises(ValueError, match="gold"):
        decide(None, rules)


def test_now_must_be_aware_and_the_tiers_known() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(None, outcomes(), now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="diamond"):
        decide(holding("diamond", valid_until=None), outcomes())


# --- properties -------------------------------------------------------------------------------

offsets = st.integers(min_value=-24 * 800, max_value=24 * 800).map(lambda hours: timedelta(hours=hours))
moments = st.one_of(st.just(timedelta(0)), offsets).map(lambda offset: NOW + offset)
optional_moments = st.one_of(st.none(), moments)
roundings: list[core.ValidityRounding] = ["none", "month", "year"]
policies: list[core.DowngradePolicy] = ["one_step", "to_qualified"]
triggers: list[core.Trigger] = ["event", "scheduled"]
pin_kinds: list[core.PinKind] = ["floor", "fixed"]
Scenario = tuple[Ladder, TierState | None, dict[str, RuleOutcome[str]], datetime, core.Trigger]


@st.composite
def ladders(draw: st.DrawFn) -> Ladder:
    size = draw(st.integers(min_value=1, max_value=5))
    tiers = [Tier("t0", 0)]
    for rank in range(1, size):
        months = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=24)))
        rounding = draw(st.sampled_from(roundings))
        policy = draw(st.sampled_from(policies))
        grace = draw(st.sampled_from([0, 0, 1, 30]))
        tiers.append(Tier(f"t{rank}", rank, Validity(months, rounding), policy, grace))
    return Ladder(tuple(draw(st.permutations(tiers))))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    ladder = draw(ladders())
    codes = [tier.code for tier in ladder.tiers]
    # Rules met only now and then, pins and grace only sometimes: else promotions and pins
    # would crowd out the retention, grace and demotion paths.
    seldom, rarely = (
        st.sampled_from([True, False, False]),
        st.sampled_from([True, False, False, False, False]),
    )
    rules = {
        code: RuleOutcome(draw(rarely), draw(seldom), f"{code} entry", f"{code} retention")
        for code in codes[1:]
    }
    now = draw(moments)
    trigger = draw(st.sampled_from(triggers))
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return ladder, None, rules, now, trigger
    pin = None
    if draw(seldom):
        pin = Pin(
            draw(st.sampled_from(pin_kinds)), draw(st.sampled_from(codes)), draw(optional_moments), "goodwill"
        )
    valid_until = draw(optional_moments)
    grace_until = None
    if valid_until is not None and draw(seldom):  # grace runs from about when the validity ended
        grace_until = valid_until + timedelta(days=draw(st.integers(min_value=0, max_value=60)))
    state = TierState(draw(st.sampled_from(codes)), draw(moments), valid_until, grace_until, pin)
    return ladder, state, rules, now, trigger


def run(scenario: Scenario) -> core.TierDecision[str]:
    ladder, state, rules, now, trigger = scenario
    return core.decide(ladder=ladder, state=state, outcomes=rules, now=now, trigger=trigger)


def rank(ladder: Ladder, code: str) -> int:
    return ladder.tier(code).rank


def live_pin(scenario: Scenario) -> Pin | None:
    _, state, _, now, _ = scenario
    pin = state.pin if state else None
    return pin if pin is not None and (pin.until is None or now < pin.until) else None


@settings(max_examples=300)
@given(scenarios())
def test_deciding_is_deterministic(scenario: Scenario) -> None:
    assert run(scenario) == run(scenario)


@settings(max_examples=300)
@given(scenarios())
def test_never_above_what_the_rules_the_current_tier_or_a_live_pin_allow(scenario: Scenario) -> None:
    ladder, state, rules, _, _ = scenario
    decision = run(scenario)

    entry_ranks = [rank(ladder, code) for code, outcome in rules.items() if outcome.entry_met]
    pin = live_pin(scenario)
    allowed = max(
        [0, *entry_ranks, rank(ladder, decision.from_tier)] + ([rank(ladder, pin.tier)] if pin else [])
    )
    assert rank(ladder, decision.to_tier) <= allowed


@settings(max_examples=300)
@given(scenarios())
def test_a_live_fixed_pin_decides_the_tier(scenario: Scenario) -> None:
    ladder, _, _, _, trigger = scenario
    pin = live_pin(scenario)
    decision = run(scenario)

    if pin is not None and pin.kind == "fixed":
        assert decision.kind == "pinned" and decision.reason == "pin_fixed"
        if trigger == "scheduled":
            assert decision.to_tier == pin.tier
        else:  # an event never lowers: a lower pin waits for the scheduled run
            expected = max(rank(ladder, pin.tier), rank(ladder, decision.from_tier))
            assert rank(ladder, decision.to_tier) == expected


@settings(max_examples=300)
@given(scenarios())
def test_a_live_floor_pin_is_never_undercut(scenario: Scenario) -> None:
    ladder = scenario[0]
    pin = live_pin(scenario)
    decision = run(scenario)

    if pin is not None and pin.kind == "floor":
        assert rank(ladder, decision.to_tier) >= rank(ladder, pin.tier)
        # ... and otherwise the rules decide: the floor only lifts what they chose.
        _, state, rules, now, trigger = scenario
        assert state is not None
        unpinned = core.decide(
            ladder=ladder, state=state_without_pin(state), outcomes=rules, now=now, trigger=trigger
        )
        expected = max(rank(ladder, unpinned.to_tier), rank(ladder, pin.tier))
        assert rank(ladder, decision.to_tier) == expected


@settings(max_examples=300)
@given(scenarios())
def test_an_event_never_lowers_renews_or_starts_grace(scenario: Scenario) -> None:
    ladder, state, _, _, trigger = scenario
    decision = run(scenario)

    if trigger == "event":
        assert rank(ladder, decision.to_tier) >= rank(ladder, decision.from_tier)
        assert decision.kind in {"promoted", "unchanged", "pinned"}
        if decision.to_tier == decision.from_tier and state is not None:
            assert decision.new_state == (state if not decision.pin_expired else state_without_pin(state))


def state_without_pin(state: TierState) -> TierState:
    return TierState(state.tier, state.achieved_at, state.valid_until, state.grace_until, None)


@settings(max_examples=300)
@given(scenarios())
def test_a_rule_demotion_goes_one_step_or_to_the_highest_qualified_tier(scenario: Scenario) -> None:
    ladder, _, rules, _, _ = scenario
    decision = run(scenario)

    if decision.kind == "demoted":
        lost = ladder.tier(decision.from_tier)
        if lost.downgrade_policy == "one_step":
            assert rank(ladder, decision.to_tier) == lost.rank - 1
        else:
            qualified = [
                tier.rank
                for tier in ladder.tiers
                if tier.rank < lost.rank
                and (tier.rank == 0 or rules[tier.code].entry_met or rules[tier.code].retention_met)
            ]
            assert rank(ladder, decision.to_tier) == max(qualified)


@settings(max_examples=300)
@given(scenarios())
def test_the_next_assessment_is_in_the_future_and_nothing_comes_due_before_it(scenario: Scenario) -> None:
    now = scenario[3]
    decision = run(scenario)

    assert decision.next_assessment_at is None or decision.next_assessment_at > now
    pin = decision.new_state.pin
    for deadline in (decision.valid_until, decision.grace_until, pin.until if pin else None):
        if deadline is not None and deadline > now:
            assert decision.next_assessment_at is not None and decision.next_assessment_at <= deadline


@settings(max_examples=300)
@given(scenarios())
def test_deciding_again_at_the_same_instant_changes_nothing(scenario: Scenario) -> None:
    ladder, _, rules, now, trigger = scenario
    first = run(scenario)

    again = core.decide(ladder=ladder, state=first.new_state, outcomes=rules, now=now, trigger=trigger)

    assert again.kind in {"unchanged", "pinned"}
    assert again.new_state == first.new_state
    assert not again.pin_expired
