"""Recording a member event: its checks, the earning rules planned on the member's facts,
the tier decision and the ledger postings, and the stored answer that makes a retry a
replay. Never commits: the caller's transaction owns it."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from fractions import Fraction
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import core, repository
from loyalty.activity import schemas as s
from loyalty.activity.event_config import (
    CachedRule,
    EventConfig,
    cached_config,
    check_event,
    load_config,
    local_day,
    now_utc,
)
from loyalty.activity.event_result import assess_tier, build_result, outcome_json, with_points
from loyalty.activity.member_activity import member_not_found
from loyalty.activity.refunds import record_refund
from loyalty.benefits import service as benefits
from loyalty.errors import Conflict, InvalidInput
from loyalty.facts.repository import row_to_facts
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.ledger.errors import ledger_error
from loyalty.ledger.group_commit import GroupCommitter
from loyalty.rules import Facts, explain
from loyalty.tiers import service as tiers

# Ledger refusals that stop one rule from earning without failing the whole event.
_RULE_REFUSALS = {
    "budget_exhausted",
    "budget_closed",
    "budget_not_active",
    "budget_not_found",
    "member_cap_reached",
    "member_not_active",
}


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


async def record(
    conn: AsyncConnection, who: Principal, req: s.EventIn, *, simulate: bool = False
) -> tuple[bool, s.EventResult]:
    """Stores the event and applies it in the caller's transaction; (replayed, answer).

    The event row is inserted first: its unique (programme, event id) is what makes a retry,
    or a concurrent duplicate, have no second effect."""
    now = now_utc()
    config = cached_config(conn, who.programme_id) or await load_config(conn, who.programme_id)
    try:
        occurred_at = check_event(req, config.settings["custom_event_types"], now)
    except InvalidInput:
        # A cached copy may be out of date: the refusal must come from the current settings.
        config = await load_config(conn, who.programme_id)
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
    day = local_day(occurred_at, who.timezone)
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
        raise member_not_found(req.member_id)
    if version != config.version:
        config = await load_config(conn, who.programme_id)
        check_event(req, config.settings["custom_event_types"], now)
    if row_id is None:
        return True, await _replay(conn, who, req, payload, simulate)
    if req.type == "order_refunded":
        return False, await record_refund(
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
    # Everything is decided here on the planned points and written in one call, which finishes
    # the event when every budget pays what was planned (the usual case).
    plan = await _plan_event(
        req,
        who,
        config,
        candidates,
        base,
        used,
        multiplier,
        tier_row,
        member_id,
        now=now,
        qualifies=qualifies,
    )
    slots, planned, facts, tier, earns = plan.slots, plan.planned, plan.facts, plan.tier, plan.earns
    result = build_result(req, occurred_at, plan.outcomes, None, facts, tier.change, simulate)
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
        outcome=outcome_json(result, _qualifying(planned)),
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
    change = await assess_tier(conn, who, member_id, now, config, facts)
    result = build_result(req, occurred_at, outcomes, None, facts, change, simulate)
    await repository.finish_event(
        conn, who.programme_id, member_id, row_id, amount, result.points, outcome_json(result, _qualifying(earned)),
        msgspec.to_builtins(result),
    )  # fmt: skip
    return False, result


@dataclasses.dataclass(slots=True)
class _EventPlan:
    """What both ways of recording an event decide before they write: each rule's slot (a plan
    or a miss), the planned (points, qualifying) pairs, the facts with them, the tier writes,
    the earns' arguments by slot and the answer's rule outcomes."""

    slots: list[s.RuleOutcome | _Plan]
    planned: list[tuple[int, bool]]
    facts: Facts
    tier: _TierWrites
    earns: dict[int, dict[str, Any]]
    outcomes: list[s.RuleOutcome]


async def _plan_event(
    req: s.EventIn,
    who: Principal,
    config: EventConfig,
    candidates: list[Any],
    base: Facts,
    used: Any,
    multiplier: Any,
    tier_row: Any,
    member_id: int,
    *,
    now: datetime,
    qualifies: bool,
) -> _EventPlan:
    slots: list[s.RuleOutcome | _Plan] = [
        await _plan_rule(req, c, base, used, multiplier) if isinstance(c, _Candidate) else c
        for c in candidates
    ]
    planned = [(p.grant, bool(p.rule["qualifying"])) for p in slots if isinstance(p, _Plan)]
    facts = _counted(base, planned, qualifies=qualifies)
    tier = _tier_writes(
        config, tier_row, facts, now=now, who=who, member_id=member_id, external_id=req.member_id
    )
    earns = {i: _earn_args(who, req, i, plan) for i, plan in _indexed(slots)}
    outcomes: list[s.RuleOutcome] = [
        _outcome(slot, slot.grant, None, pending=earns[i]["pending"]) if isinstance(slot, _Plan) else slot
        for i, slot in enumerate(slots)
    ]
    return _EventPlan(slots, planned, facts, tier, earns, outcomes)


# Plans of an optimistic read that went stale before its write, retried before the event
# goes the transactional way (which waits for the member's locks instead).
_OPTIMISTIC_ATTEMPTS = 3


async def record_event(
    conn: AsyncConnection, who: Principal, req: s.EventIn, *, committer: GroupCommitter | None = None
) -> tuple[bool, s.EventResult]:
    """POST /v1/events: ``record``'s effect and answer, in two round trips when it can.

    ``conn`` is the request's connection, in a transaction not begun yet (SQLAlchemy begins it
    at its first statement). The optimistic path runs on its driver connection outside any
    transaction: one read without locks (repository.read_for_event), the plan made here on
    what it read, and one call that writes it all (repository.write_event), refused as stale
    if the member's facts or tier row changed since the read. A replay is one round trip.

    The event goes the transactional way, ``record`` in ``conn``'s transaction, when the plan
    needs what the read does not carry (a refund, a configuration not cached, a member's
    benefit multiplier, a promotion that pays a bonus), when the ledger does not pay an earn as
    planned, and after _OPTIMISTIC_ATTEMPTS stale reads.

    With the process's group ``committer`` the optimistic write joins its next batch, with the
    ledger's postings and other events (ledger/group_commit.py): one call and one commit for
    them all; a stale refusal of this event is its own, and it is read and planned again."""
    config = cached_config(conn, who.programme_id)
    if (
        req.type != "order_refunded"
        and config is not None
        and not (config.has_multipliers and config.rules.get(req.type))
    ):
        driver = (await conn.get_raw_connection()).driver_connection
        # Only outside a transaction is each call its own (a caller's open one would hold it).
        if driver is not None and not driver.is_in_transaction():
            for _ in range(_OPTIMISTIC_ATTEMPTS):
                try:
                    answer = await _record_optimistic(driver, who, req, config, committer)
                except repository.StaleRead:
                    continue
                except repository.NeedsTransaction:
                    break
                if answer is None:
                    break
                return answer
    return await record(conn, who, req)


async def _record_optimistic(
    driver: Any, who: Principal, req: s.EventIn, config: EventConfig, committer: GroupCommitter | None
) -> tuple[bool, s.EventResult] | None:
    """One read, a plan, one write; None when the event needs the transactional way."""
    now = now_utc()
    try:
        occurred_at = check_event(req, config.settings["custom_event_types"], now)
    except InvalidInput:
        return None  # the transactional way refuses it on the current settings
    payload = msgspec.to_builtins(req)
    day = local_day(occurred_at, who.timezone)
    is_order = req.type == "order_completed"
    spend = (req.amount or 0) if is_order else None
    event_view = {**payload, "amount": req.amount}
    candidates = [_prefilter(rule, event_view, occurred_at, day) for rule in config.rules.get(req.type, ())]
    usage = [
        (c.rule.row["id"], *period) for c in candidates if isinstance(c, _Candidate) for period in c.periods
    ]
    read = await repository.read_for_event(
        driver,
        who.programme_id,
        req.member_id,
        req.event_id,
        now=now,
        day=day,
        order_at=occurred_at if is_order else None,
        spend=spend,
        usage=usage,
    )
    if read["member_id"] is None:
        raise member_not_found(req.member_id)
    if read["config_version"] != config.version:
        return None  # the transactional way loads the configuration again
    if read["stored"]:
        stored = read["stored_response"]
        return True, _replayed(
            req,
            payload,
            {
                "payload": msgspec.json.decode(read["stored_payload"]),
                "response": None if stored is None else msgspec.json.decode(stored),
            },
        )
    member_id = read["member_id"]
    row = _ReadRow(read)
    tier_row = None if read["tier_row"] is None else {k: read[k] for k in repository.TIER_ROW}
    used = {(rule_id, period): points for rule_id, period, points in msgspec.json.decode(read["usage"])}
    base = row_to_facts(row, now=now)
    qualifies = core.in_window(day, read["window_start"], who.timezone)
    plan = await _plan_event(
        req,
        who,
        config,
        candidates,
        base,
        used,
        _NoMultiplier(),
        tier_row,
        member_id,
        now=now,
        qualifies=qualifies,
    )
    slots, planned, facts, tier, earns = plan.slots, plan.planned, plan.facts, plan.tier, plan.earns
    if not tier.here:
        return None  # a promotion's bonus is an earn of its own: assess_member writes it
    result = build_result(req, occurred_at, plan.outcomes, None, facts, tier.change, False)
    event = {
        "event_id": req.event_id,
        "type": req.type,
        "occurred_at": occurred_at,
        "order_ref": req.order_ref,
        "amount": req.amount,
        "currency": req.currency,
        "channel": req.channel,
        "payload": payload,
    }
    replayed, results = await repository.write_event(
        driver if committer is None else committer,
        who.programme_id,
        member_id,
        config_version=config.version,
        facts_xmin=read["facts_xmin"],
        tier_xmin=read["tier_xmin"],
        event=event,
        facts_values=read["facts_values"],
        day=day,
        spend=spend,
        usage=usage,
        amount=req.amount,
        earns=list(earns.values()),
        tier=tier.row,
        tier_new=tier_row is None,
        history=tier.history,
        events=tier.events,
        outcome=outcome_json(result, _qualifying(planned)),
        response=msgspec.to_builtins(result),
    )
    if replayed:
        raise repository.StaleRead("the event was recorded meanwhile")  # the next read replays it
    done = iter(results)
    outcomes = [_earned(slot, next(done)) if isinstance(slot, _Plan) else slot for slot in slots]
    return False, msgspec.structs.replace(result, rules=outcomes)


class _ReadRow:
    """read_for_event's record as facts.row_to_facts reads a row (attributes and _mapping)."""

    def __init__(self, record: Any) -> None:
        self._mapping = dict(record)
        self.__dict__.update(self._mapping)


class _NoMultiplier:
    """The multiplier of a programme without multiplier benefits."""

    async def get(self) -> Fraction:
        return Fraction(1)


@dataclasses.dataclass(slots=True)
class _TierWrites:
    """What activity_event_apply writes of the member's tier, as plan_tier decided it."""

    here: bool = True  # False: a promotion pays a bonus (an earn of its own): assess_member writes
    row: dict[str, Any] | None = None  # the member_tiers values to store, if they changed
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    change: tiers.TierChange | None = None


def _tier_writes(
    config: EventConfig,
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


async def _replay(
    conn: AsyncConnection, who: Principal, req: s.EventIn, payload: Any, simulate: bool
) -> s.EventResult:
    return _replayed(req, payload, await repository.stored_event(conn, who.programme_id, req.event_id))


def _replayed(req: s.EventIn, payload: Any, stored: dict[str, Any] | None) -> s.EventResult:
    """The stored answer of an event id seen before, if this is the same event."""
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

    rule: CachedRule
    periods: list[tuple[str, date]]  # the cap periods the event falls in


def _prefilter(
    cached: CachedRule, event_view: dict[str, Any], occurred_at: datetime, day: date
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
    multiplier: MemberMultiplier | _NoMultiplier,
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
    return with_points(facts, points, qualifying) if points or qualifying else facts


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
        "pending": vests_at is not None and vests_at > now_utc(),
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
