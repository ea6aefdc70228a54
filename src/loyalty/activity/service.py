"""Member activity use cases: record an event (facts, earning rules, refunds), simulate it,
import history, read facts and events, tags, settings. Never commits: the caller's
transaction (web.provide_tx, or a worker task) owns it.
"""

from __future__ import annotations

import base64
import dataclasses
import weakref
from datetime import UTC, date, datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.activity import core, repository
from loyalty.activity import schemas as s
from loyalty.benefits import service as benefits
from loyalty.errors import Conflict, DomainError, InvalidInput, NotFound
from loyalty.facts.repository import facts_to_json, load_facts, row_to_facts
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.ledger.errors import ledger_error
from loyalty.rules import Facts, Rule, explain, parse_rule
from loyalty.tiers import repository as tier_repository
from loyalty.tiers import service as tiers
from loyalty.tiers.definition import LadderSpec, parse_definition

# Ledger refusals that stop one rule from earning without failing the whole event.
_RULE_REFUSALS = {
    "budget_exhausted",
    "budget_closed",
    "budget_not_active",
    "budget_not_found",
    "member_cap_reached",
    "member_not_active",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _member_not_found(member_id: str) -> NotFound:
    return NotFound(
        "No member with this id in the programme.", code="member_not_found", extra={"member_id": member_id}
    )


async def _member_id(conn: AsyncConnection, who: Principal, external_id: str) -> int:
    found = await repository.member(conn, who.programme_id, external_id)
    if found is None:
        raise _member_not_found(external_id)
    return found[0]


class MemberMultiplier:
    """The member's points multiplier from their benefits (a Gold tier's x1.5, say), read once
    per event and only when a rule fires, since most events of most members need none."""

    def __init__(
        self,
        conn: AsyncConnection,
        programme_id: int,
        member_id: int,
        now: datetime,
        *,
        any_in_programme: bool,
    ) -> None:
        self._args = (conn, programme_id, member_id, now)
        # Without a multiplier benefit in the programme there is nothing to read.
        self._value: Fraction | None = None if any_in_programme else Fraction(1)

    async def get(self) -> Fraction:
        if self._value is None:
            self._value = await benefits.multiplier_for(*self._args)
        return self._value


# Validation --------------------------------------------------------------------------------


def check_event(req: s.EventIn, custom_types: list[str], now: datetime) -> datetime:
    """Type-specific checks the schema cannot state; returns the event time."""
    core.check_event_type(req.type, custom_types)
    occurred_at = core.check_occurred_at(req.occurred_at, now)
    if req.type == "order_completed":
        for field in ("order_ref", "amount", "currency"):
            if getattr(req, field) is None:
                raise InvalidInput(field, "is required for an order_completed event")
    elif req.type == "order_refunded":
        if req.order_ref is None:
            raise InvalidInput("order_ref", "is required for an order_refunded event")
        if req.amount is not None and req.amount == 0:
            raise InvalidInput("amount", "a refund must be above 0 (leave it out for a full refund)")
        if req.items:
            raise InvalidInput("items", "are not part of a refund event")
    else:
        for field in ("amount", "items", "order_ref", "currency"):
            if getattr(req, field) is not None:
                raise InvalidInput(field, f"is only for order events, not {req.type}")
    if req.data is not None and len(msgspec.json.encode(req.data)) > 8192:
        raise InvalidInput("data", "at most 8 KiB of JSON")
    return occurred_at


def _local_day(moment: datetime, tz: str) -> date:
    return moment.astimezone(ZoneInfo(tz)).date()


# Recording ---------------------------------------------------------------------------------


# Configuration -----------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Rule:
    """An active earning rule as stored, its condition and formula parsed once per process."""

    row: dict[str, Any]
    _condition: Rule | None = None
    _formula: core.Formula | None = None

    def condition(self) -> Rule:
        if self._condition is None:
            self._condition = parse_rule(self.row["condition"], path="condition")
        return self._condition

    def formula(self) -> core.Formula:
        if self._formula is None:
            self._formula = core.parse_formula(self.row["formula"])
        return self._formula


@dataclasses.dataclass(slots=True)
class _Config:
    """What an event reads of its programme's configuration, as of ``version``."""

    version: int
    timezone: str
    settings: dict[str, Any]
    rules: dict[str, list[_Rule]]  # active rules by event type, in priority order
    ladders: list[dict[str, Any]]  # versions published, latest effective_at first
    has_multipliers: bool  # an active multiplier benefit exists: members' multipliers are read
    _specs: dict[int, LadderSpec] = dataclasses.field(default_factory=dict)

    def ladder(self, now: datetime) -> LadderSpec | None:
        """The ladder in force at ``now`` (tiers.repository.current_version's choice)."""
        for row in self.ladders:
            if row["effective_at"] <= now:
                spec = self._specs.get(row["version"])
                if spec is None:
                    spec = self._specs[row["version"]] = parse_definition(
                        row["definition"], version=row["version"]
                    )
                return spec
        return None


# Per engine (one database) and programme; an event checks the version it reads anyway.
_CONFIGS: weakref.WeakKeyDictionary[Engine, dict[int, _Config]] = weakref.WeakKeyDictionary()


async def _load_config(conn: AsyncConnection, programme_id: int) -> _Config:
    head = await repository.programme_config(conn, programme_id)
    by_type: dict[str, list[_Rule]] = {}
    for row in await repository.rules(conn, programme_id):
        if row["active"]:
            by_type.setdefault(row["event_type"], []).append(_Rule(row))
    config = _Config(
        version=head["config_version"],
        timezone=head["timezone"] or "UTC",
        settings=head["settings"],
        rules=by_type,
        ladders=await tier_repository.ladder_versions(conn, programme_id),
        has_multipliers=head["has_multipliers"],
    )
    _CONFIGS.setdefault(conn.engine.sync_engine, {})[programme_id] = config
    return config


def _cached_config(conn: AsyncConnection, programme_id: int) -> _Config | None:
    return _CONFIGS.get(conn.engine.sync_engine, {}).get(programme_id)


# Recording ---------------------------------------------------------------------------------


async def record(
    conn: AsyncConnection, who: Principal, req: s.EventIn, *, simulate: bool = False
) -> tuple[bool, s.EventResult]:
    """Stores the event and applies it in the caller's transaction; (replayed, answer).

    The event row is inserted first: its unique (programme, event id) is what makes a retry,
    or a concurrent duplicate, have no second effect."""
    now = _now()
    config = _cached_config(conn, who.programme_id) or await _load_config(conn, who.programme_id)
    try:
        occurred_at = check_event(req, config.settings["custom_event_types"], now)
    except InvalidInput:
        # A cached copy may be out of date: the refusal must come from the current settings.
        config = await _load_config(conn, who.programme_id)
        occurred_at = check_event(req, config.settings["custom_event_types"], now)
    payload = msgspec.to_builtins(req)
    # A refund is stored negative; one without an amount is resolved below, under the lock.
    amount = req.amount if req.type != "order_refunded" or req.amount is None else -req.amount
    event = {
        "event_id": req.event_id,
        "type": req.type,
        "occurred_at": occurred_at,
        "order_ref": req.order_ref,
        "amount": amount,
        "currency": req.currency,
        "channel": req.channel,
    }
    day = _local_day(occurred_at, who.timezone)
    is_order = req.type == "order_completed"
    version, member_id, row_id = await repository.begin_event(
        conn,
        who.programme_id,
        req.member_id,
        event,
        payload,
        order_at=occurred_at if is_order else None,
        day=day,
        orders=1,
        spend=(req.amount or 0) if is_order else None,
    )
    if member_id is None:
        raise _member_not_found(req.member_id)
    if version != config.version:
        config = await _load_config(conn, who.programme_id)
        check_event(req, config.settings["custom_event_types"], now)
    if row_id is None:
        return True, await _replay(conn, who, req, payload, simulate)
    if req.type == "order_refunded":
        return False, await _record_refund(
            conn,
            who,
            req,
            config,
            member_id,
            row_id,
            day=day,
            now=now,
            occurred_at=occurred_at,
            simulate=simulate,
        )

    # The rules that can fire whatever the member's facts (time frame, event filter); the cap
    # usage rows of those with caps are taken with the facts.
    event_view = {**payload, "amount": amount}
    candidates = [_prefilter(rule, event_view, occurred_at, day) for rule in config.rules.get(req.type, ())]
    usage = [
        (c.rule.row["id"], *period) for c in candidates if isinstance(c, _Candidate) for period in c.periods
    ]
    row, tier_row, used = await repository.refresh_for_event(
        conn, who.programme_id, member_id, now=now, usage=usage
    )
    base = row_to_facts(row, now=now)
    # A late event (its day before the window) earns, but its points do not qualify now.
    qualifies = core.in_window(day, row.window_start, who.timezone)
    multiplier = MemberMultiplier(
        conn, who.programme_id, member_id, now, any_in_programme=config.has_multipliers
    )
    slots: list[s.RuleOutcome | _Plan] = [
        await _plan_rule(req, c, base, used, multiplier) if isinstance(c, _Candidate) else c
        for c in candidates
    ]
    plans = [slot for slot in slots if isinstance(slot, _Plan)]

    # Everything is decided here on the planned points and written in one call, which finishes
    # the event when every budget pays what was planned (the usual case).
    planned = [(p.grant, bool(p.rule["qualifying"])) for p in plans]
    facts = _counted(base, planned, qualifies=qualifies)
    tier = _tier_writes(
        config, tier_row, facts, now=now, who=who, member_id=member_id, external_id=req.member_id
    )
    earns = {i: _earn_args(who, req, i, plan) for i, plan in _indexed(slots)}
    outcomes: list[s.RuleOutcome] = [
        _outcome(slot, slot.grant, None, pending=earns[i]["pending"]) if isinstance(slot, _Plan) else slot
        for i, slot in enumerate(slots)
    ]
    result = _result(req, occurred_at, outcomes, None, facts, tier.change, simulate)
    finished, results = await repository.apply_event(
        conn,
        who.programme_id,
        member_id,
        row_id,
        day=day,
        amount=amount,
        earns=list(earns.values()),
        tier=tier.row,
        tier_new=tier_row is None,
        history=tier.history,
        events=tier.events,
        outcome=_outcome_json(result, _qualifying(planned)),
        response=msgspec.to_builtins(result) if tier.here else None,
    )
    done = iter(results)
    outcomes = [_earned(slot, next(done)) if isinstance(slot, _Plan) else slot for slot in slots]
    if finished:
        return False, msgspec.structs.replace(result, rules=outcomes)

    # A budget paid less than planned, a bonus is due, or a tier row appeared meanwhile: the
    # tier is decided again on what was earned, with everything a change writes.
    earned = [(o.points, bool(p.rule["qualifying"])) for o, p in _paired(outcomes, slots)]
    facts = _counted(base, earned, qualifies=qualifies)
    change = await _assess(conn, who, member_id, now, config, facts)
    result = _result(req, occurred_at, outcomes, None, facts, change, simulate)
    await repository.finish_event(
        conn, who.programme_id, member_id, row_id, amount, result.points, _outcome_json(result, _qualifying(earned)),
        msgspec.to_builtins(result),
    )  # fmt: skip
    return False, result


@dataclasses.dataclass(slots=True)
class _TierWrites:
    """What activity_event_apply writes of the member's tier, as plan_tier decided it."""

    here: bool = True  # False: a promotion pays a bonus (an earn of its own): assess_member writes
    row: dict[str, Any] | None = None  # the member_tiers values to store, if they changed
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    change: tiers.TierChange | None = None


def _tier_writes(
    config: _Config,
    tier_row: dict[str, Any] | None,
    facts: Facts,
    *,
    now: datetime,
    who: Principal,
    member_id: int,
    external_id: str,
) -> _TierWrites:
    spec = config.ladder(now)
    if spec is None:
        return _TierWrites()
    plan = tiers.plan_tier(spec, tier_row, facts, now=now, trigger="event", tz=config.timezone)
    if plan.decision.kind == "promoted" and spec.rules_of(plan.decision.to_tier).bonus:
        return _TierWrites(here=False)
    # A member without a row is on the base tier: a quiet decision stores nothing.
    writes = _TierWrites(row=None if plan.stored_ok or (tier_row is None and plan.quiet) else plan.values)
    if not plan.quiet:
        writes.history, writes.events = tiers.tier_records(
            plan, facts, now=now, trigger="event", actor=who.actor, external_id=external_id
        )
        writes.change = tiers.tier_change(plan, member_id)
    return writes


async def _record_refund(
    conn: AsyncConnection,
    who: Principal,
    req: s.EventIn,
    config: _Config,
    member_id: int,
    row_id: int,
    *,
    day: date,
    now: datetime,
    occurred_at: datetime,
    simulate: bool,
) -> s.EventResult:
    """A refund: the order's remaining amount, the proportional clawback, the facts and tier."""
    history = await repository.order_history(conn, who.programme_id, member_id, req.order_ref or "")
    refund_amount = _refund_amount(req, history)
    amount = -refund_amount
    # A refund takes the order's spend and qualifying points back on the order's own day (its
    # own day when the order is unknown): from the window the order counted in, if it still does,
    # and never twice once the order's day has left the window.
    if history["ordered_at"] is not None:
        day = _local_day(history["ordered_at"], who.timezone)
    await repository.add_activity(conn, who.programme_id, member_id, day, spend=amount)
    # The facts row is held from begin_event on; the refresh answers the facts it leaves.
    row, _, _ = await repository.refresh_for_event(conn, who.programme_id, member_id, now=now, usage=[])
    base = row_to_facts(row, now=now)
    qualifies = core.in_window(day, row.window_start, who.timezone)
    clawback, qualifying = await _claw_back(conn, who, req, history, refund_amount)
    points = -clawback.points
    facts = base
    if points or qualifying:
        await repository.add_points_and_activity(
            conn, who.programme_id, member_id, day, lifetime=max(points, 0), qualifying=qualifying,
            in_window=qualifies,
        )  # fmt: skip
        facts = _with_points(base, points, qualifying if qualifies else 0)
    # An event never demotes (the schedule does); a refund may still meet a pin's expiry.
    change = await _assess(conn, who, member_id, now, config, facts)
    result = _result(req, occurred_at, [], clawback, facts, change, simulate, points=points)
    await repository.finish_event(
        conn, who.programme_id, member_id, row_id, amount, points, _outcome_json(result, qualifying),
        msgspec.to_builtins(result),
    )  # fmt: skip
    return result


def _result(
    req: s.EventIn,
    occurred_at: datetime,
    outcomes: list[s.RuleOutcome],
    clawback: s.ClawbackOutcome | None,
    facts: Facts,
    change: tiers.TierChange | None,
    simulate: bool,
    *,
    points: int | None = None,
) -> s.EventResult:
    tier = None
    if change is not None:
        facts = dataclasses.replace(facts, tier=change.to_tier)
        tier = s.TierOutcome(
            kind=change.kind, reason=change.reason, from_tier=change.from_tier, to_tier=change.to_tier,
            bonus=change.bonus,
        )  # fmt: skip
    return s.EventResult(
        event_id=req.event_id,
        member_id=req.member_id,
        type=req.type,
        occurred_at=occurred_at,
        points=sum(o.points for o in outcomes) if points is None else points,
        rules=outcomes,
        clawback=clawback,
        facts=facts_to_json(facts),
        tier=tier,
        simulated=simulate,
    )


def _outcome_json(result: s.EventResult, qualifying: int) -> dict[str, Any]:
    """What member_events.outcome keeps: the qualifying points and the rules that earned."""
    return {"qualifying": qualifying, "rules": [o.code for o in result.rules if o.points]}


def _with_points(facts: Facts, points: int, qualifying: int) -> Facts:
    """The facts after add_points_and_activity(lifetime=max(points, 0), qualifying=qualifying)."""
    return dataclasses.replace(
        facts,
        lifetime_points=(facts.lifetime_points or 0) + max(points, 0),
        qualifying_points=(facts.qualifying_points or 0) + int(qualifying),  # a clawback's share is numeric
    )


async def _assess(
    conn: AsyncConnection, who: Principal, member_id: int, now: datetime, config: _Config, facts: Facts
) -> tiers.TierChange | None:
    return await tiers.assess_member(
        conn,
        programme_id=who.programme_id,
        member_id=member_id,
        now=now,
        trigger="event",
        actor=who.actor,
        preloaded=tiers.Preloaded(spec=config.ladder(now), timezone=config.timezone, facts=facts),
    )


def _refund_amount(req: s.EventIn, history: dict[str, Any]) -> int:
    left = history["order_amount"] - history["refunded"]
    if req.amount is None:
        return max(left, 0)  # a full refund: whatever of the order is not refunded yet
    if history["orders"] and req.amount > left:
        raise InvalidInput("amount", f"is more than the order has left to refund ({left})")
    return req.amount


async def _replay(
    conn: AsyncConnection, who: Principal, req: s.EventIn, payload: Any, simulate: bool
) -> s.EventResult:
    stored = await repository.stored_event(conn, who.programme_id, req.event_id)
    if stored is None or stored["payload"] != payload or stored["response"] is None:
        raise Conflict(
            "This event_id was already used with a different event.",
            code="event_id_reused",
            extra={"event_id": req.event_id},
        )
    if stored["response"].get("imported"):
        raise Conflict(
            "This event_id was imported as history; it has no stored answer.",
            code="event_id_reused",
            extra={"event_id": req.event_id},
        )
    return msgspec.convert(stored["response"], s.EventResult)


@dataclasses.dataclass(slots=True)
class _Candidate:
    """A rule whose time frame and event filter pass: its condition waits for the facts."""

    rule: _Rule
    periods: list[tuple[str, date]]  # the cap periods the event falls in


def _prefilter(
    cached: _Rule, event_view: dict[str, Any], occurred_at: datetime, day: date
) -> s.RuleOutcome | _Candidate:
    rule = cached.row
    if rule["starts_at"] and occurred_at < rule["starts_at"]:
        return _miss(rule, f"the rule starts at {rule['starts_at'].isoformat()}")
    if rule["ends_at"] and occurred_at >= rule["ends_at"]:
        return _miss(rule, f"the rule ended at {rule['ends_at'].isoformat()}")
    filtered = core.filter_miss(rule["event_filter"], event_view)
    if filtered:
        return _miss(rule, f"event filter: {filtered}")
    periods: list[tuple[str, date]] = []
    if rule["cap_per_day"] is not None:
        periods.append(("day", day))
    if rule["cap_per_month"] is not None:
        periods.append(("month", day.replace(day=1)))
    return _Candidate(cached, periods)


def _miss(rule: dict[str, Any], reason: str, condition: Any = None) -> s.RuleOutcome:
    return s.RuleOutcome(code=rule["code"], fired=False, points=0, reason=reason, condition=condition)


@dataclasses.dataclass(slots=True)
class _Plan:
    """A rule that fired and will earn ``grant`` points, once the ledger takes them."""

    rule: dict[str, Any]
    wanted: int
    grant: int
    periods: list[tuple[str, date]]
    trace: Any


async def _plan_rule(
    req: s.EventIn,
    candidate: _Candidate,
    facts: Facts,
    used: dict[tuple[int, str], int],
    multiplier: MemberMultiplier,
) -> s.RuleOutcome | _Plan:
    """The rule's condition on the member's facts, its formula and caps: an outcome when it
    earns nothing, else a plan."""
    rule = candidate.rule.row
    trace = msgspec.to_builtins(dataclasses.asdict(explain(candidate.rule.condition(), facts)))
    if not trace["passed"]:
        return _miss(rule, "the condition does not hold for the member's facts", trace)
    wanted = core.points_for(candidate.rule.formula(), req.amount, member_multiplier=await multiplier.get())
    if wanted <= 0:
        return _miss(rule, "the formula gives 0 points for this event", trace)
    grant = core.capped(
        wanted,
        [
            (rule["cap_per_day"], used.get((rule["id"], "day"), 0)),
            (rule["cap_per_month"], used.get((rule["id"], "month"), 0)),
        ],
    )
    if grant <= 0:
        return s.RuleOutcome(
            code=rule["code"],
            fired=True,
            points=0,
            requested=wanted,
            status="not_earned",
            reason="the member reached the rule's cap for this period",
            condition=trace,
        )
    return _Plan(rule=rule, wanted=wanted, grant=grant, periods=candidate.periods, trace=trace)


def _indexed(slots: list[s.RuleOutcome | _Plan]) -> list[tuple[int, _Plan]]:
    return [(i, slot) for i, slot in enumerate(slots) if isinstance(slot, _Plan)]


def _paired(
    outcomes: list[s.RuleOutcome], slots: list[s.RuleOutcome | _Plan]
) -> list[tuple[s.RuleOutcome, _Plan]]:
    return [(o, slot) for o, slot in zip(outcomes, slots, strict=True) if isinstance(slot, _Plan)]


def _counted(facts: Facts, earned: list[tuple[int, bool]], *, qualifies: bool) -> Facts:
    """The facts once the earns are counted: (points, whether they qualify) per earn. Their
    qualifying points count only when the event's day is in the window (``qualifies``), as
    activity_event_apply counts them."""
    points = sum(n for n, _ in earned)
    qualifying = _qualifying(earned) if qualifies else 0
    return _with_points(facts, points, qualifying) if points or qualifying else facts


def _qualifying(earned: list[tuple[int, bool]]) -> int:
    return sum(n for n, q in earned if q)


def _earn_args(who: Principal, req: s.EventIn, slot: int, plan: _Plan) -> dict[str, Any]:
    """One earn of activity_event_apply: ledger_earn's arguments (earn_params), the rule's cap
    periods and where its outcome sits in the answer."""
    rule, code = plan.rule, plan.rule["code"]
    earn = ls.EarnRequest(
        member_id=req.member_id,
        budget=rule["budget"],
        points=plan.grant,
        reference=req.order_ref or req.event_id,
        reason=f"earning rule {code}",
        allow_partial=True,
        pending_days=rule["pending_days"] or None,
        expiry=msgspec.convert(rule["expiry"], ls.ExpiryIn) if rule["expiry"] else None,
        metadata={"event_id": req.event_id, "rule": code},
    )
    params = ledger.earn_params(who, earn, f"event:{req.event_id}:{code}")
    vests_at = params["p_vests_at"]
    return {
        "slot": slot,
        "rule_id": rule["id"],
        "periods": [[period, start.isoformat()] for period, start in plan.periods],
        "qualifying": bool(rule["qualifying"]),
        "pending": vests_at is not None and vests_at > _now(),
        "key": params["p_key"],
        "fingerprint": params["p_fingerprint"].hex(),
        "member": params["p_member"],
        "budget": params["p_budget"],
        "amount": params["p_amount"],
        "reference": params["p_reference"],
        "reason": params["p_reason"],
        "vests_at": vests_at,
        "expires_at": params["p_expires_at"],
        "metadata": earn.metadata,
        "actor": params["p_actor"],
    }


def _outcome(
    plan: _Plan, earned: int, body: dict[str, Any] | None, *, pending: bool = False
) -> s.RuleOutcome:
    """The rule's outcome when the ledger gave it ``earned`` points (body: its answer; None
    for the outcome planned before the earn, whose transaction id is not known yet)."""
    notes = []
    if plan.grant < plan.wanted:
        notes.append(f"capped from {plan.wanted} to {plan.grant} by the rule's cap")
    if earned < plan.grant:
        notes.append(f"the budget had only {earned} of {plan.grant} left")
    if body is not None:
        pending = body["status"] == "pending"
    status = "pending" if pending else ("partial" if earned < plan.wanted else "earned")
    return s.RuleOutcome(
        code=plan.rule["code"],
        fired=True,
        points=earned,
        requested=plan.wanted,
        status=status,
        reason="; ".join(notes) or "the event passed the filter and the condition holds",
        transaction_id=None if body is None else body["transaction_id"],
        condition=plan.trace,
    )


def _earned(plan: _Plan, result: dict[str, Any]) -> s.RuleOutcome:
    """The outcome of one of activity_event_apply's earns. A budget's refusal (see
    activity_rule_earn) undoes only this rule's earn; any other refusal fails the event."""
    if result.get("error_code") is not None:
        exc = ledger_error(result["error_code"], result["error_detail"])
        if exc.code not in _RULE_REFUSALS:
            raise exc
        return s.RuleOutcome(
            code=plan.rule["code"],
            fired=True,
            points=0,
            requested=plan.wanted,
            status="not_earned",
            reason=f"{exc.code}: {exc.detail}",
            condition=plan.trace,
        )
    body = result["body"]
    return _outcome(plan, int(body["amount"]), body)


async def _claw_back(
    conn: AsyncConnection, who: Principal, req: s.EventIn, history: dict[str, Any], refund: int
) -> tuple[s.ClawbackOutcome, int]:
    """(what was clawed back, qualifying points to take off)."""
    order_ref = req.order_ref or ""
    if not history["orders"]:
        return s.ClawbackOutcome(order_ref=order_ref, points=0, reason="no order with this order_ref"), 0
    want = core.refund_clawback(
        earned=history["earned"],
        clawed=history["clawed"],
        order_amount=history["order_amount"],
        refunded_before=history["refunded"],
        refund=refund,
    )
    if want <= 0:
        return s.ClawbackOutcome(
            order_ref=order_ref, points=0, reason="the order earned no points to take back"
        ), 0
    claw = ls.ClawbackRequest(
        member_id=req.member_id, reference=order_ref, points=want, reason=f"refund {req.event_id}"
    )
    try:
        async with conn.begin_nested():
            posted = await ledger.clawback(conn, who, claw, f"event:{req.event_id}:clawback")
    except DomainError as exc:
        if exc.code not in ("reference_not_found", "clawback_exceeds_earned"):
            raise
        return s.ClawbackOutcome(order_ref=order_ref, points=0, reason=f"{exc.code}: {exc.detail}"), 0
    body = msgspec.json.decode(posted.body)
    clawed = int(body["clawed_back"])
    earned = history["earned"]
    qualifying = -(history["qualifying"] * clawed // earned) if earned else 0
    share = (
        "the whole order"
        if refund + history["refunded"] >= history["order_amount"]
        else (f"{refund} of {history['order_amount']}")
    )
    return s.ClawbackOutcome(
        order_ref=order_ref,
        points=clawed,
        reason=f"refund of {share}: proportional share of the {earned} points the order earned",
        transaction_id=body["transaction_id"],
    ), qualifying


async def simulate(conn: AsyncConnection, who: Principal, req: s.EventIn) -> s.EventResult:
    """What the event would do, computed by recording it in a savepoint that is rolled back."""
    if await repository.stored_event(conn, who.programme_id, req.event_id) is not None:
        raise Conflict(
            "This event_id is already recorded; simulate a new one.",
            code="event_id_reused",
            extra={"event_id": req.event_id},
        )
    savepoint = await conn.begin_nested()
    try:
        _, result = await record(conn, who, req, simulate=True)
    finally:
        await savepoint.rollback()
    return result


# Import ------------------------------------------------------------------------------------


async def import_events(conn: AsyncConnection, who: Principal, req: s.ImportRequest) -> s.ImportResult:
    """History in bulk. Without earning: one INSERT for the events and their activity days, one
    refresh of the programme's facts. With earn=true each event goes through record() in order."""
    now = _now()
    settings = await repository.settings(conn, who.programme_id)
    seen: set[str] = set()
    for i, event in enumerate(req.events):
        try:
            check_event(event, settings["custom_event_types"], now)
        except InvalidInput as exc:
            raise InvalidInput(f"events[{i}].{exc.field}", exc.reason) from None
        if event.event_id in seen:
            raise InvalidInput(f"events[{i}].event_id", "repeats an earlier event of this import")
        seen.add(event.event_id)
    if req.earn:
        points = imported = 0
        for event in sorted(req.events, key=lambda e: e.occurred_at or now):
            replayed, result = await record(conn, who, event)
            imported += not replayed
            points += 0 if replayed else result.points
        refreshed = await repository.refresh_facts(conn, who.programme_id, now=now, rebuild=True)
        return await _imported(
            conn,
            who,
            s.ImportResult(
                received=len(req.events),
                imported=imported,
                duplicates=len(req.events) - imported,
                members_refreshed=refreshed,
                points=points,
            ),
        )
    ids = await repository.members_by_external(
        conn, who.programme_id, sorted({e.member_id for e in req.events})
    )
    rows = []
    for i, event in enumerate(req.events):
        if event.member_id not in ids:
            raise NotFound(
                "No member with this id in the programme.",
                code="member_not_found",
                extra={"member_id": event.member_id, "field": f"events[{i}].member_id"},
            )
        # A refund without an amount is taken as a refund of 0 here: history imports should
        # carry the refunded amount (there is no order state to resolve "the rest" against).
        amount = -(event.amount or 0) if event.type == "order_refunded" else event.amount
        rows.append(
            {
                "member_id": ids[event.member_id],
                "event_id": event.event_id,
                "type": event.type,
                "occurred_at": event.occurred_at or now,
                "order_ref": event.order_ref,
                "amount": amount,
                "currency": event.currency,
                "channel": event.channel,
                "payload": msgspec.to_builtins(event),
            }
        )
    tz = await repository.programme_timezone(conn, who.programme_id)
    inserted = await repository.import_events(conn, who.programme_id, rows, tz)
    refreshed = await repository.refresh_facts(conn, who.programme_id, now=now, rebuild=True)
    return await _imported(
        conn,
        who,
        s.ImportResult(
            received=len(rows),
            imported=inserted,
            duplicates=len(rows) - inserted,
            members_refreshed=refreshed,
            points=0,
        ),
    )


async def _imported(conn: AsyncConnection, who: Principal, result: s.ImportResult) -> s.ImportResult:
    # One row for the whole import: its counts (each earned point is in the ledger itself).
    # An import of events all seen before changed nothing, like a replay.
    if result.imported == 0:
        return result
    await audit.record(
        conn, who, action="events.import", entity="programme", entity_id=who.programme_code, after=result
    )
    return result


# Reads, tags, settings ---------------------------------------------------------------------


async def member_facts(conn: AsyncConnection, who: Principal, external_id: str) -> s.FactsView:
    member_id = await _member_id(conn, who, external_id)
    now = _now()
    facts = await load_facts(conn, programme_id=who.programme_id, member_id=member_id, now=now)
    assert facts is not None
    settings = await repository.settings(conn, who.programme_id)
    row = await repository.facts_row(conn, who.programme_id, member_id) or {}
    return s.FactsView(
        member_id=external_id,
        facts=facts_to_json(facts),
        window_kind=settings["window_kind"],
        window_months=settings["window_months"],
        window_start=row.get("window_start"),
        first_order_at=row.get("first_order_at"),
        last_order_at=row.get("last_order_at"),
        updated_at=row.get("updated_at"),
    )


def _encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"e:{row_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, value = raw.partition(":")
        if tag != "e":
            raise ValueError(tag)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor", "is not a cursor this API returned") from None


async def member_events(
    conn: AsyncConnection, who: Principal, external_id: str, *, cursor: str | None, limit: int
) -> s.EventPage:
    member_id = await _member_id(conn, who, external_id)
    before = _decode_cursor(cursor) if cursor else None
    rows = await repository.events_page(conn, who.programme_id, member_id, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [s.EventView(**{k: v for k, v in r.items() if k != "id"}) for r in rows]
    return s.EventPage(items=items, next_cursor=_encode_cursor(rows[-1]["id"]) if more else None)


async def update_tags(
    conn: AsyncConnection, who: Principal, external_id: str, req: s.TagsUpdate
) -> s.TagsView:
    overlap = sorted(set(req.add) & set(req.remove))
    if overlap:
        raise InvalidInput("remove", f"names tags also added: {overlap}")
    member_id = await _member_id(conn, who, external_id)
    before = await repository.tags(conn, who.programme_id, member_id)
    tags = await repository.update_tags(conn, who.programme_id, member_id, req.add, req.remove)
    await audit.record(
        conn,
        who,
        action="member.tags",
        entity="member",
        entity_id=external_id,
        before={"tags": before},
        after={"tags": tags},
    )
    return s.TagsView(member_id=external_id, tags=tags)


async def get_settings(conn: AsyncConnection, who: Principal) -> s.ActivitySettingsView:
    return s.ActivitySettingsView(**await repository.settings(conn, who.programme_id))


async def put_settings(
    conn: AsyncConnection, who: Principal, req: s.ActivitySettingsIn
) -> s.ActivitySettingsView:
    core.check_settings(
        window_kind=req.window_kind,
        window_months=req.window_months,
        rfm=req.rfm,
        lifecycle=req.lifecycle,
        custom=req.custom_event_types,
    )
    values = msgspec.to_builtins(req)
    before = await repository.settings(conn, who.programme_id)
    await repository.put_settings(conn, who.programme_id, values)
    await audit.record(
        conn,
        who,
        action="activity_settings.update",
        entity="activity_settings",
        entity_id=who.programme_code,
        before=before,
        after=values,
    )
    # Scores and stages follow the new cut points at once, not at the next nightly refresh.
    await repository.refresh_facts(conn, who.programme_id, now=_now())
    return s.ActivitySettingsView(**values)


async def refresh_programme(conn: AsyncConnection, programme_id: int) -> int:
    """Window figures, RFM and lifecycle of every member of the programme: one statement."""
    return await repository.refresh_facts(conn, programme_id, now=_now())


# Earning rules -----------------------------------------------------------------------------


def _rule_not_found(code: str) -> NotFound:
    return NotFound("No earning rule with this code.", code="earning_rule_not_found", extra={"rule": code})


def _rule_view(row: dict[str, Any]) -> s.EarningRuleView:
    return s.EarningRuleView(**{k: v for k, v in row.items() if k != "id"})


async def _check_rule(conn: AsyncConnection, who: Principal, values: dict[str, Any]) -> None:
    settings = await repository.settings(conn, who.programme_id)
    try:
        core.check_event_type(values["event_type"], settings["custom_event_types"])
    except InvalidInput as exc:
        raise InvalidInput("event_type", exc.reason) from None
    if values["event_type"] == "order_refunded":
        raise InvalidInput("event_type", "refunds claw back what the order earned; they earn nothing")
    parse_rule(values["condition"], path="condition")
    core.check_event_filter(values["event_filter"])
    formula = core.parse_formula(values["formula"])
    if formula.kind == "per_unit" and values["event_type"] not in core.ORDER_TYPES:
        raise InvalidInput("formula.kind", "per_unit needs an amount: only order_completed events carry one")
    for field in ("starts_at", "ends_at"):
        if values[field] is not None and values[field].tzinfo is None:
            raise InvalidInput(field, "must carry a time zone offset")
    if values["starts_at"] and values["ends_at"] and values["ends_at"] <= values["starts_at"]:
        raise InvalidInput("ends_at", "must be after starts_at")
    if not await repository.budget_exists(conn, who.programme_id, values["budget"]):
        raise InvalidInput("budget", f"no budget {values['budget']!r} in the programme")


async def create_rule(conn: AsyncConnection, who: Principal, req: s.EarningRuleIn) -> s.EarningRuleView:
    values = msgspec.to_builtins(req, builtin_types=(datetime,))
    await _check_rule(conn, who, values)
    row = await repository.insert_rule(conn, who.programme_id, values)
    if row is None:
        raise Conflict(
            "An earning rule with this code exists.", code="earning_rule_exists", extra={"rule": req.code}
        )
    view = _rule_view(row)
    await audit.record(
        conn, who, action="earning_rule.create", entity="earning_rule", entity_id=req.code, after=view
    )
    return view


async def update_rule(
    conn: AsyncConnection,
    who: Principal,
    code: str,
    req: s.EarningRulePatch,
    *,
    action: str = "earning_rule.update",
) -> s.EarningRuleView:
    current = await repository.rule(conn, who.programme_id, code, lock=True)
    if current is None:
        raise _rule_not_found(code)
    values = {k: v for k, v in current.items() if k not in ("id", "created_at", "updated_at")}
    for field in req.__struct_fields__:
        value = getattr(req, field)
        if value is not None:
            values[field] = msgspec.to_builtins(value) if field == "expiry" else value
    for cap in ("cap_per_day", "cap_per_month"):
        if values[cap] == 0:
            values[cap] = None  # 0 removes the cap
    await _check_rule(conn, who, values)
    row = await repository.update_rule(conn, who.programme_id, values)
    assert row is not None
    view = _rule_view(row)
    before = _rule_view(current)
    await audit.record(
        conn, who, action=action, entity="earning_rule", entity_id=code, before=before, after=view
    )
    return view


async def deactivate_rule(conn: AsyncConnection, who: Principal, code: str) -> s.EarningRuleView:
    return await update_rule(
        conn, who, code, s.EarningRulePatch(active=False), action="earning_rule.deactivate"
    )


async def get_rule(conn: AsyncConnection, who: Principal, code: str) -> s.EarningRuleView:
    row = await repository.rule(conn, who.programme_id, code)
    if row is None:
        raise _rule_not_found(code)
    return _rule_view(row)


async def list_rules(conn: AsyncConnection, who: Principal) -> list[s.EarningRuleView]:
    return [_rule_view(r) for r in await repository.rules(conn, who.programme_id)]
