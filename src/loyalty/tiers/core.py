"""Pure tier decisions: which tier a member holds, until when, and why. No database, no HTTP.

The caller evaluates every tier's entry and retention rule for the member (the rule language
lives elsewhere) and passes the booleans with opaque explanations; ``decide`` turns them,
the member's ``TierState``, the clock and the trigger into one ``TierDecision``.

Time is half-open everywhere: a deadline ``t`` (valid_until, grace_until, pin.until) has
passed when ``now >= t``. Calendar arithmetic (months, month and year ends, grace days) runs
on the wall clock of the programme's time zone ``tz``; every datetime returned is UTC.

Rules of ``decide``, in the order they are applied
---------------------------------------------------
1. Promotion (both triggers). The target is the highest tier whose entry rule is met (the
   base tier always qualifies). If it ranks above the current tier the member is promoted
   straight to it, skipping tiers in between: achieved_at = now, validity restarts from now,
   grace is cleared. Reason ``entry_rule_met``.
2. ``trigger="event"`` stops here: an event only ever promotes. It never renews, never starts
   grace and never demotes, so an earning can't cost a member their tier. Reason ``no_change``.
3. ``trigger="scheduled"`` with a validity that has not passed (or is indefinite): nothing is
   due, ``unchanged`` / ``no_change``.
4. Scheduled, validity passed. If the current tier's retention rule is met (or its entry rule:
   a member who would qualify afresh keeps it) -> ``retained``: valid_until = validity_end
   from *now* (a late job renews from when it ran), achieved_at kept, grace cleared.
5. Else, if the tier has ``grace_days`` and the member is not in grace yet -> ``grace_started``
   with grace_until = now + grace_days, tier unchanged. Grace counts from the assessment, not
   from valid_until, so a member always gets the promised days on the tier even if the job
   ran late or a pin held the tier past its validity. Reason ``validity_ended_grace``.
6. Else, in grace and grace not over -> ``unchanged`` / ``in_grace``. (A member who meets the
   retention rule during grace is kept by rule 4 at the next scheduled run.)
7. Else demote, by the *current* tier's policy: ``one_step`` to the next lower tier of the
   ladder; ``to_qualified`` to the highest lower tier whose entry OR retention rule is met (at
   least the base tier). The landing tier counts as reached now: achieved_at = now, its own
   validity from now, no grace. Reason ``grace_ended`` after a grace, else ``validity_ended``.
8. Pins. An expired pin (``until`` passed) is ignored and reported with ``pin_expired=True``
   so the caller can clear and audit it. A live ``fixed`` pin replaces rules 1-7: the member
   is put on exactly the pin tier; except that an event never lowers a tier, so a fixed pin
   below the current tier waits for the next scheduled run (whoever sets a pin should run a
   scheduled decision at once). A live ``floor`` pin lets rules 1-7 decide and raises the
   result to the floor tier if it came out lower; at the floor tier itself it also holds off
   grace, so the grace window only starts once the pin no longer protects the tier.
   When a pin decides, the kind is ``pinned`` (reason ``pin_fixed`` / ``pin_floor``) whichever
   way the tier moved: ``promoted`` and ``demoted`` are kept for what the rules did. A tier
   the member reaches only through a pin holds until the earlier of the pin's end and the
   tier's own validity, so it is re-assessed by the rules when the pin lapses. A pin that
   merely holds the current tier changes nothing in the state.

``next_assessment_at`` is the earliest of valid_until, grace_until and a live pin's until
that is still in the future: when the scheduled job must look at the member again.
Deciding again at the same instant on ``decision.new_state`` changes nothing.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

from loyalty.errors import InvalidInput

E = TypeVar("E")  # the rule language's explanation type; opaque to this module

DowngradePolicy = Literal["one_step", "to_qualified"]
ValidityRounding = Literal["none", "month", "year"]
PinKind = Literal["floor", "fixed"]
Trigger = Literal["event", "scheduled"]
RuleKind = Literal["entry", "retention"]
DecisionKind = Literal["promoted", "demoted", "retained", "grace_started", "unchanged", "pinned"]
Reason = Literal[
    "entry_rule_met",
    "retention_rule_met",
    "validity_ended_grace",
    "in_grace",
    "grace_ended",
    "validity_ended",
    "pin_fixed",
    "pin_floor",
    "no_change",
]


@dataclass(frozen=True, slots=True)
class Validity:
    """How long a reached tier holds: ``months`` after it is reached (None = for ever),
    optionally rounded up to the end of that month or of that calendar year.

    ``Validity(12, "year")`` is "the rest of this year and all of the next".
    """

    months: int | None = None
    round_to: ValidityRounding = "none"

    def __post_init__(self) -> None:
        if self.months is not None and self.months < 1:
            raise InvalidInput("validity.months", "must be at least 1, or null for no end")


@dataclass(frozen=True, slots=True)
class Tier:
    code: str
    rank: int  # 0 is the base tier everyone has; higher is better
    validity: Validity = Validity()
    downgrade_policy: DowngradePolicy = "one_step"
    grace_days: int = 0

    def __post_init__(self) -> None:
        if not self.code:
            raise InvalidInput("tiers.code", "must not be empty")
        if self.rank < 0:
            raise InvalidInput(f"tiers[{self.code}].rank", "must not be negative")
        if self.grace_days < 0:
            raise InvalidInput(f"tiers[{self.code}].grace_days", "must not be negative")


@dataclass(frozen=True, slots=True)
class Ladder:
    """A programme's tiers, kept in rank order (lowest first) whatever order they came in."""

    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.tiers, key=lambda tier: tier.rank))
        object.__setattr__(self, "tiers", ordered)
        if not ordered:
            raise InvalidInput("tiers", "a ladder needs at least its base tier")
        codes = [tier.code for tier in ordered]
        if len(set(codes)) != len(codes):
            raise InvalidInput("tiers", "tier codes must be unique")
        ranks = [tier.rank for tier in ordered]
        if len(set(ranks)) != len(ranks):
            raise InvalidInput("tiers", "tier ranks must be unique")
        base = ordered[0]
        if base.rank != 0:
            raise InvalidInput("tiers", "the lowest tier must have rank 0: it is the base tier")
        # The base tier can't be lost, so an end or a grace on it would only mislead admins.
        if base.validity.months is not None:
            raise InvalidInput(f"tiers[{base.code}].validity", "the base tier holds for ever")
        if base.grace_days:
            raise InvalidInput(f"tiers[{base.code}].grace_days", "the base tier has no grace")

    @property
    def base(self) -> Tier:
        return self.tiers[0]

    def position(self, code: str) -> int:
        for index, tier in enumerate(self.tiers):
            if tier.code == code:
                return index
        raise ValueError(f"tier {code!r} is not in the ladder")

    def tier(self, code: str) -> Tier:
        return self.tiers[self.position(code)]


@dataclass(frozen=True, slots=True)
class Pin:
    """A manual override: ``floor`` = never below ``tier``, ``fixed`` = exactly ``tier``.
    ``until`` None means until someone lifts it; ``reason`` is only carried into the trace."""

    kind: PinKind
    tier: str
    until: datetime | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TierState:
    tier: str
    achieved_at: datetime
    valid_until: datetime | None  # None: the tier does not expire
    grace_until: datetime | None = None  # set only while in grace
    pin: Pin | None = None


@dataclass(frozen=True, slots=True)
class RuleOutcome(Generic[E]):
    """The caller's evaluation of one tier's two rules for this member."""

    entry_met: bool
    retention_met: bool
    entry_explanation: E | None = None
    retention_explanation: E | None = None


@dataclass(frozen=True, slots=True)
class RuleVerdict(Generic[E]):
    """One rule that took part in a decision, for the audit trail."""

    tier: str
    rule: RuleKind
    met: bool
    explanation: E | None


@dataclass(frozen=True, slots=True)
class TierDecision(Generic[E]):
    kind: DecisionKind
    reason: Reason
    from_tier: str
    to_tier: str
    achieved_at: datetime
    valid_until: datetime | None
    grace_until: datetime | None
    pin: Pin | None  # the pin that was looked at, live or expired, with its reason
    pin_expired: bool
    decided_by_tier: str | None
    explanations: tuple[RuleVerdict[E], ...]
    next_assessment_at: datetime | None

    @property
    def new_state(self) -> TierState:
        """The state to store; an expired pin is dropped."""
        return TierState(
            tier=self.to_tier,
            achieved_at=self.achieved_at,
            valid_until=self.valid_until,
            grace_until=self.grace_until,
            pin=None if self.pin_expired else self.pin,
        )


def next_tier_target(ladder: Ladder, current_code: str) -> Tier | None:
    """The tier right above ``current_code`` (what the member works towards); None at the top."""
    above = ladder.position(current_code) + 1
    return ladder.tiers[above] if above < len(ladder.tiers) else None


def validity_end(tier: Tier, start: datetime, *, tz: str = "UTC") -> datetime | None:
    """When ``tier`` reached at ``start`` stops holding; None if it never does.

    Months are calendar months on the local wall clock, the day clamped to the month's
    length (31 January + 1 month = 28/29 February). A rounded end is the start of the day
    after the month's or year's last day, local time: the whole last day counts.
    """
    _require_aware("start", start)
    months = tier.validity.months
    if months is None:
        return None
    zone = ZoneInfo(tz)
    end = _add_months(start.astimezone(zone), months)
    if tier.validity.round_to == "none":
        return end.astimezone(UTC)
    if tier.validity.round_to == "month":
        last_day = date(end.year, end.month, calendar.monthrange(end.year, end.month)[1])
    else:
        last_day = date(end.year, 12, 31)
    return datetime.combine(last_day + timedelta(days=1), time.min, zone).astimezone(UTC)


def decide(
    *,
    ladder: Ladder,
    state: TierState | None,
    outcomes: Mapping[str, RuleOutcome[E]],
    now: datetime,
    trigger: Trigger,
    tz: str = "UTC",
) -> TierDecision[E]:
    """Decide the member's tier; see the module docstring for the rules.

    ``state`` None is a new member on the base tier. ``outcomes`` must hold every tier but
    the base (whose rules are always met); a missing one raises ValueError rather than
    silently counting as "not met", which could demote a member on a caller's bug.
    """
    _require_aware("now", now)
    now = now.astimezone(UTC)
    if state is None:
        state = TierState(tier=ladder.base.code, achieved_at=now, valid_until=None)
    current = ladder.tier(state.tier)
    rules = _Rules(ladder, outcomes)

    pin = state.pin
    pin_expired = pin is not None and _has_passed(pin.until, now)
    live_pin = None if pin is None or pin_expired else pin

    move: _Move[E]
    if live_pin is not None and live_pin.kind == "fixed":
        pin_tier = ladder.tier(live_pin.tier)
        # Events never lower a tier, not even for a pin: the scheduled run will.
        target = current if trigger == "event" and pin_tier.rank < current.rank else pin_tier
        move = _pinned(target, live_pin, "pin_fixed", (), current=current, state=state, now=now, tz=tz)
    else:
        move = _by_rules(ladder, rules, current=current, state=state, now=now, trigger=trigger, tz=tz)
        if live_pin is not None:
            move = _apply_floor(
                move,
                floor=ladder.tier(live_pin.tier),
                pin=live_pin,
                current=current,
                state=state,
                now=now,
                tz=tz,
            )

    return TierDecision(
        kind=move.kind,
        reason=move.reason,
        from_tier=current.code,
        to_tier=move.tier.code,
        achieved_at=move.achieved_at,
        valid_until=move.valid_until,
        grace_until=move.grace_until,
        pin=pin,
        pin_expired=pin_expired,
        decided_by_tier=move.decided_by,
        explanations=move.explanations,
        next_assessment_at=_earliest_future(
            (move.valid_until, move.grace_until, live_pin.until if live_pin else None), now
        ),
    )


# --- internals ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Move(Generic[E]):
    kind: DecisionKind
    reason: Reason
    tier: Tier
    achieved_at: datetime
    valid_until: datetime | None
    grace_until: datetime | None
    decided_by: str | None
    explanations: tuple[RuleVerdict[E], ...]


class _Rules(Generic[E]):
    """The caller's rule outcomes, with the base tier's rules forced to "met"."""

    def __init__(self, ladder: Ladder, outcomes: Mapping[str, RuleOutcome[E]]) -> None:
        missing = [tier.code for tier in ladder.tiers[1:] if tier.code not in outcomes]
        if missing:
            raise ValueError(f"no rule outcome for tiers {missing}")
        self._base = ladder.base.code
        self._outcomes = outcomes

    def entry(self, tier: Tier) -> RuleVerdict[E]:
        if tier.code == self._base:
            return RuleVerdict(tier.code, "entry", True, None)
        outcome = self._outcomes[tier.code]
        return RuleVerdict(tier.code, "entry", outcome.entry_met, outcome.entry_explanation)

    def retention(self, tier: Tier) -> RuleVerdict[E]:
        if tier.code == self._base:
            return RuleVerdict(tier.code, "retention", True, None)
        outcome = self._outcomes[tier.code]
        return RuleVerdict(tier.code, "retention", outcome.retention_met, outcome.retention_explanation)


def _by_rules(
    ladder: Ladder,
    rules: _Rules[E],
    *,
    current: Tier,
    state: TierState,
    now: datetime,
    trigger: Trigger,
    tz: str,
) -> _Move[E]:
    """Rules 1-7 of the module docstring: what the member's rules alone decide."""
    entry_target = next(tier for tier in reversed(ladder.tiers) if rules.entry(tier).met)
    if entry_target.rank > current.rank:
        return _Move(
            "promoted",
            "entry_rule_met",
            entry_target,
            achieved_at=now,
            valid_until=validity_end(entry_target, now, tz=tz),
            grace_until=None,
            decided_by=entry_target.code,
            explanations=(rules.entry(entry_target),),
        )

    if trigger == "event" or not _has_passed(state.valid_until, now):
        return _unchanged(current, state, "no_change", decided_by=None, explanations=())

    retention, entry = rules.retention(current), rules.entry(current)
    if retention.met or entry.met:
        kept = retention if retention.met else entry
        return _Move(
            "retained",
            "retention_rule_met" if retention.met else "entry_rule_met",
            current,
            achieved_at=state.achieved_at,
            valid_until=validity_end(current, now, tz=tz),
            grace_until=None,
            decided_by=current.code,
            explanations=(kept,),
        )
    if state.grace_until is None and current.grace_days > 0:
        grace_until = _add_days(now, current.grace_days, tz)
        return _Move(
            "grace_started",
            "validity_ended_grace",
            current,
            achieved_at=state.achieved_at,
            valid_until=state.valid_until,
            grace_until=grace_until,
            decided_by=current.code,
            explanations=(retention, entry),
        )
    if state.grace_until is not None and not _has_passed(state.grace_until, now):
        return _unchanged(
            current, state, "in_grace", decided_by=current.code, explanations=(retention, entry)
        )

    below = ladder.tiers[: ladder.position(current.code)]
    landing_why: tuple[RuleVerdict[E], ...] = ()
    if current.downgrade_policy == "one_step":
        landing = below[-1]
    else:
        landing = next(t for t in reversed(below) if rules.entry(t).met or rules.retention(t).met)
        landing_entry = rules.entry(landing)
        landing_why = (landing_entry if landing_entry.met else rules.retention(landing),)
    return _Move(
        "demoted",
        "grace_ended" if state.grace_until is not None else "validity_ended",
        landing,
        achieved_at=now,
        valid_until=validity_end(landing, now, tz=tz),
        grace_until=None,
        decided_by=current.code,
        explanations=(retention, entry, *landing_why),
    )


def _unchanged(
    current: Tier,
    state: TierState,
    reason: Reason,
    *,
    decided_by: str | None,
    explanations: tuple[RuleVerdict[E], ...],
    kind: DecisionKind = "unchanged",
) -> _Move[E]:
    return _Move(
        kind,
        reason,
        current,
        achieved_at=state.achieved_at,
        valid_until=state.valid_until,
        grace_until=state.grace_until,
        decided_by=decided_by,
        explanations=explanations,
    )


def _apply_floor(
    move: _Move[E], *, floor: Tier, pin: Pin, current: Tier, state: TierState, now: datetime, tz: str
) -> _Move[E]:
    below_floor = move.tier.rank < floor.rank
    # Grace at the floor tier would run out while the pin still holds the tier, and leave
    # the member none when the pin lapses: it waits for the pin to end instead.
    grace_at_floor = move.kind == "grace_started" and current.rank == floor.rank
    if below_floor or grace_at_floor:
        return _pinned(
            floor, pin, "pin_floor", move.explanations, current=current, state=state, now=now, tz=tz
        )
    return move


def _pinned(
    target: Tier,
    pin: Pin,
    reason: Reason,
    explanations: tuple[RuleVerdict[E], ...],
    *,
    current: Tier,
    state: TierState,
    now: datetime,
    tz: str,
) -> _Move[E]:
    if target.code == current.code:
        # Holding the current tier: the state stays as it is, for the rules to take up later.
        return _unchanged(
            current, state, reason, decided_by=pin.tier, explanations=explanations, kind="pinned"
        )
    # A tier given by the pin holds no longer than the pin, so the rules re-assess it then.
    return _Move(
        "pinned",
        reason,
        target,
        achieved_at=now,
        valid_until=_earliest((pin.until, validity_end(target, now, tz=tz))),
        grace_until=None,
        decided_by=pin.tier,
        explanations=explanations,
    )


def _require_aware(name: str, moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _has_passed(deadline: datetime | None, now: datetime) -> bool:
    return deadline is not None and now >= deadline


def _earliest(moments: tuple[datetime | None, ...]) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return min(known) if known else None


def _earliest_future(moments: tuple[datetime | None, ...], now: datetime) -> datetime | None:
    return _earliest(tuple(moment for moment in moments if moment is not None and moment > now))


def _add_months(local: datetime, months: int) -> datetime:
    month_index = local.month - 1 + months
    year, month = local.year + month_index // 12, month_index % 12 + 1
    return local.replace(year=year, month=month, day=min(local.day, calendar.monthrange(year, month)[1]))


def _add_days(moment: datetime, days: int, tz: str) -> datetime:
    # Local calendar days, like point expiry: across a DST change a day is 23 or 25 hours.
    return (moment.astimezone(ZoneInfo(tz)) + timedelta(days=days)).astimezone(UTC)
