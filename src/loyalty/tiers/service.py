"""Tier use cases: ladder versions, assessing a member, pins and reads. Never commits."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit, rules
from loyalty.errors import Conflict, DomainError, InvalidInput, NotFound
from loyalty.facts.repository import facts_to_json, load_facts
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as ledger_schemas
from loyalty.ledger import service as ledger
from loyalty.outbox import repository as outbox
from loyalty.programmes import repository as programmes
from loyalty.rules.facts import Facts
from loyalty.tiers import core, repository
from loyalty.tiers import schemas as s
from loyalty.tiers.definition import LadderSpec, outcomes_for, parse_definition, state_for, trace_of

log = logging.getLogger("loyalty.tiers")
BACKTEST_SAMPLE = 20
SCHEDULER = "scheduler"


@dataclass(frozen=True, slots=True)
class _System(Principal):
    """The tier engine acting on its own (a promotion bonus): shows as ``tiers`` in the ledger."""

    name: str = "tiers"

    @property
    def actor(self) -> str:
        return f"system:{self.name}"


@dataclass(frozen=True, slots=True)
class TierChange:
    """What assess_member wrote for a member."""

    member_id: int
    kind: str
    reason: str
    from_tier: str
    to_tier: str
    ladder_version: int
    decision: core.TierDecision[rules.Explanation]
    bonus: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class Preloaded:
    """What a caller of assess_member already holds: the ladder in force (None: no ladder), the
    programme's time zone and, optionally, the member's facts (their tier is re-read under the
    tier row's lock)."""

    spec: LadderSpec | None
    timezone: str
    facts: Facts | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(name: str, moment: datetime | None) -> None:
    if moment is not None and (moment.tzinfo is None or moment.utcoffset() is None):
        raise InvalidInput(name, "must carry a time zone offset, e.g. 2026-01-01T00:00:00Z")


def _member_not_found(member_id: str) -> NotFound:
    return NotFound(
        "No member with this id in the programme.", code="member_not_found", extra={"member_id": member_id}
    )


def _no_ladder() -> NotFound:
    return NotFound("The programme has no published tier ladder yet.", code="no_tier_ladder")


async def _member(conn: AsyncConnection, who: Principal, external_id: str) -> int:
    found = await repository.member_id(conn, who.programme_id, external_id)
    if found is None:
        raise _member_not_found(external_id)
    return found


async def _ladder(conn: AsyncConnection, programme_id: int, now: datetime) -> LadderSpec | None:
    row = await repository.current_version(conn, programme_id, now)
    return None if row is None else parse_definition(row["definition"], version=row["version"])


# --- ladder versions -------------------------------------------------------------------------


def _definition(req: s.LadderCreate) -> dict[str, Any]:
    definition: dict[str, Any] = {"tiers": msgspec.to_builtins(req.tiers)}
    spec = parse_definition(definition)  # raises RuleError (400 with the path) or InvalidInput
    # Store the rules normalised, the retention rule spelled out even when it is the entry rule.
    for raw in definition["tiers"]:
        tier_rules = spec.rules_of(raw["code"])
        raw["entry"] = rules.to_json(tier_rules.entry)
        raw["retention"] = rules.to_json(tier_rules.retention)
    return definition


async def _view(conn: AsyncConnection, programme_id: int, row: dict[str, Any]) -> s.VersionView:
    return s.VersionView(
        version=row["version"],
        status=row["status"],
        note=row["note"],
        effective_at=row["effective_at"],
        published_at=row["published_at"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        qualification_window=await repository.qualification_window(conn, programme_id),
        tiers=row["definition"].get("tiers", []),
    )


async def create_version(conn: AsyncConnection, who: Principal, req: s.LadderCreate) -> s.VersionView:
    row = await repository.create_version(conn, who.programme_id, _definition(req), req.note, who.actor)
    # The config tables carry no config_version trigger on Citus (docs/scaling.md).
    await programmes.bump_config_version(conn, who.programme_id)
    view = await _view(conn, who.programme_id, row)
    await audit.record(
        conn, who, action="tier_ladder.draft", entity="tier_ladder", entity_id=view.version, after=view
    )
    return view


async def list_versions(conn: AsyncConnection, who: Principal) -> s.VersionList:
    rows = await repository.list_versions(conn, who.programme_id)
    return s.VersionList(items=[await _view(conn, who.programme_id, r) for r in rows])


async def _version_row(
    conn: AsyncConnection, who: Principal, version: int, *, lock: bool = False
) -> dict[str, Any]:
    row = await repository.get_version(conn, who.programme_id, version, lock=lock)
    if row is None:
        raise NotFound("No such ladder version.", code="tier_version_not_found", extra={"version": version})
    return row


async def get_version(conn: AsyncConnection, who: Principal, version: int) -> s.VersionView:
    return await _view(conn, who.programme_id, await _version_row(conn, who, version))


async def backtest(conn: AsyncConnection, who: Principal, version: int) -> s.BacktestView:
    """A dry run of the version against every member's current tier: nothing is written."""
    row = await _version_row(conn, who, version)
    spec = parse_definition(row["definition"], version=version)
    counts_stmt, movers_stmt = repository.backtest_statement(who.programme_id, spec, _now(), BACKTEST_SAMPLE)
    counts = (await conn.execute(counts_stmt)).one()
    movers = (await conn.execute(movers_stmt)).all()
    return s.BacktestView(
        version=version,
        members=counts.members,
        up=counts.up,
        down=counts.down,
        stay=counts.stay,
        by_tier=dict(counts.by_tier or {}),
        sample=[
            s.Mover(member_id=m.member_id, from_tier=m.from_tier, to_tier=m.to_tier, facts=m.facts)
            for m in movers
        ],
    )


async def backtest_movers(
    conn: AsyncConnection,
    who: Principal,
    version: int,
    *,
    direction: Literal["up", "down"] | None = None,
    after: str | None = None,
    limit: int = 50,
) -> s.MoverPage:
    """Every member the version would move (up, down or either), a page at a time in member
    id order. A dry run like backtest: nothing is written."""
    row = await _version_row(conn, who, version)
    spec = parse_definition(row["definition"], version=version)
    stmt = repository.backtest_movers_statement(
        who.programme_id, spec, _now(), direction=direction, after=after, limit=limit + 1
    )
    movers = (await conn.execute(stmt)).all()
    more = len(movers) > limit
    movers = movers[:limit]
    return s.MoverPage(
        items=[
            s.Mover(member_id=m.member_id, from_tier=m.from_tier, to_tier=m.to_tier, facts=m.facts)
            for m in movers
        ],
        next_cursor=movers[-1].member_id if more and movers else None,
    )


async def update_draft(
    conn: AsyncConnection, who: Principal, version: int, req: s.LadderCreate
) -> s.VersionView:
    """Replace a draft's tiers and note (validated as on create); a published version is 409."""
    row = await _version_row(conn, who, version, lock=True)
    if row["status"] != "draft":
        raise Conflict(
            "Only a draft can be edited.", code="tier_version_not_draft", extra={"status": row["status"]}
        )
    before = await _view(conn, who.programme_id, row)
    updated = await repository.update_draft(conn, who.programme_id, version, _definition(req), req.note)
    assert updated is not None  # locked above as a draft
    await programmes.bump_config_version(conn, who.programme_id)
    view = await _view(conn, who.programme_id, updated)
    await audit.record(
        conn,
        who,
        action="tier_ladder.update_draft",
        entity="tier_ladder",
        entity_id=version,
        before=before,
        after=view,
    )
    return view


async def publish(
    conn: AsyncConnection, who: Principal, version: int, req: s.PublishRequest
) -> s.VersionView:
    now = _now()
    _aware("effective_at", req.effective_at)
    row = await _version_row(conn, who, version, lock=True)
    if row["status"] != "draft":
        raise Conflict(
            "Only a draft can be published.", code="tier_version_not_draft", extra={"status": row["status"]}
        )
    effective_at = req.effective_at or now
    latest = await repository.latest_effective_at(conn, who.programme_id)
    if latest is not None and effective_at < latest:
        raise InvalidInput("effective_at", f"must not be before the current ladder's ({latest.isoformat()})")
    await repository.publish(conn, who.programme_id, version, effective_at, now)
    await programmes.bump_config_version(conn, who.programme_id)
    view = await _view(conn, who.programme_id, await _version_row(conn, who, version))
    before = await _view(conn, who.programme_id, row)
    await audit.record(
        conn,
        who,
        action="tier_ladder.publish",
        entity="tier_ladder",
        entity_id=version,
        before=before,
        after=view,
    )
    return view


# --- assessing -------------------------------------------------------------------------------


def _history_worthy(decision: core.TierDecision[Any]) -> bool:
    # A pin that merely holds the current tier is not a change; everything else the rules did is.
    if decision.kind == "unchanged":
        return False
    return not (decision.kind == "pinned" and decision.from_tier == decision.to_tier)


@dataclass(frozen=True, slots=True)
class TierPlan:
    """What the rules decide for one member, before anything is written (plan_tier)."""

    spec: LadderSpec
    decision: core.TierDecision[Any]
    values: dict[str, Any]  # the member_tiers columns after the decision
    stored_ok: bool  # the stored row already holds ``values`` (but the ladder version)
    worthy: bool  # a change the history keeps (a pin that merely holds the tier is not)

    @property
    def quiet(self) -> bool:
        """Nothing to write but, at most, the member_tiers row (no history, event or bonus)."""
        return not self.worthy and not self.decision.pin_expired


def plan_tier(
    spec: LadderSpec,
    row: dict[str, Any] | None,
    facts: Facts,
    *,
    now: datetime,
    trigger: Literal["event", "scheduled"],
    tz: str,
) -> TierPlan:
    """The decision for a member whose tier row is ``row`` (None: none yet) and whose facts are
    ``facts``: pure, so that the event path can decide on the row it read with the facts."""
    state = state_for(spec, row)
    decision = core.decide(
        ladder=spec.ladder, state=state, outcomes=outcomes_for(spec, facts), now=now, trigger=trigger, tz=tz
    )
    new = decision.new_state
    values: dict[str, Any] = {
        "tier": new.tier,
        "rank": spec.ladder.tier(new.tier).rank,
        "ladder_version": spec.version,
        "achieved_at": new.achieved_at,
        "valid_until": new.valid_until,
        "grace_until": new.grace_until,
        "pin_kind": new.pin.kind if new.pin else None,
        "pin_tier": new.pin.tier if new.pin else None,
        "pin_until": new.pin.until if new.pin else None,
        "pin_reason": new.pin.reason if new.pin else None,
        "next_assessment_at": decision.next_assessment_at,
    }
    stored_ok = row is not None and all(row[k] == v for k, v in values.items() if k != "ladder_version")
    return TierPlan(spec, decision, values, stored_ok, _history_worthy(decision))


def tier_records(
    plan: TierPlan,
    facts: Facts,
    *,
    now: datetime,
    trigger: Literal["event", "scheduled"],
    actor: str,
    external_id: str | None,
    bonus: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a decision writes after the member_tiers row: history rows (a pin that expired, the
    change with its deciding rules, the facts and the bonus) and, when the tier moved, the
    tier.changed domain event of member ``external_id``."""
    decision, spec = plan.decision, plan.spec
    facts_json = facts_to_json(facts)
    trace = trace_of(decision, trigger=trigger, at=now)
    common = {"at": now, "ladder_version": spec.version, "facts": facts_json, "actor": actor}
    history: list[dict[str, Any]] = []
    if decision.pin_expired:
        history.append(
            {**common, "kind": "pin_expired", "reason": "pin_expired", "from_tier": decision.from_tier,
             "to_tier": decision.from_tier, "trace": trace}
        )  # fmt: skip
    if plan.worthy:
        history.append(
            {**common, "kind": decision.kind, "reason": decision.reason, "from_tier": decision.from_tier,
             "to_tier": decision.to_tier, "trace": trace if bonus is None else {**trace, "bonus": bonus}}
        )  # fmt: skip
    events: list[dict[str, Any]] = []
    if decision.from_tier != decision.to_tier:
        events.append(
            {
                "type": "tier.changed",
                "subject": f"member:{external_id}",
                "payload": {
                    "member_id": external_id,
                    "from_tier": decision.from_tier,
                    "to_tier": decision.to_tier,
                    "kind": decision.kind,
                    "reason": decision.reason,
                    "ladder_version": spec.version,
                    "trigger": trigger,
                    "at": now.isoformat(),
                },
            }
        )
    return history, events


def tier_change(plan: TierPlan, member_id: int, bonus: dict[str, Any] | None = None) -> TierChange:
    decision = plan.decision
    return TierChange(
        member_id=member_id,
        kind=decision.kind,
        reason=decision.reason,
        from_tier=decision.from_tier,
        to_tier=decision.to_tier,
        ladder_version=plan.spec.version,
        decision=decision,
        bonus=bonus,
    )


async def assess_member(
    conn: AsyncConnection,
    *,
    programme_id: int,
    member_id: int,
    now: datetime,
    trigger: Literal["event", "scheduled"],
    actor: str,
    preloaded: Preloaded | None = None,
) -> TierChange | None:
    """Decide the member's tier now and write what changed: member_tiers, a history row with the
    deciding rules explained and the facts, a tier.changed event, the promotion bonus. Runs in
    the caller's transaction; returns None when nothing but (at most) the next assessment time
    changed, or when the programme has no ladder yet. ``preloaded`` spares the reads of what
    the caller already has (the event path)."""
    spec = await _ladder(conn, programme_id, now) if preloaded is None else preloaded.spec
    if spec is None:
        return None
    row = await repository.lock_member_tier(conn, programme_id, member_id)
    if row is None:
        await repository.lock_new_member(conn, programme_id, member_id)
        row = await repository.lock_member_tier(conn, programme_id, member_id)
    facts: Facts | None
    if preloaded is not None and preloaded.facts is not None:
        # The tier fact is member_tiers.tier: read again here, under the row's lock.
        facts = dataclasses.replace(preloaded.facts, tier=row["tier"] if row else None)
    else:
        facts = await load_facts(conn, programme_id=programme_id, member_id=member_id, now=now)
    if facts is None:
        raise NotFound("No such member.", code="member_not_found", extra={"member_id": member_id})
    tz = await repository.programme_timezone(conn, programme_id) if preloaded is None else preloaded.timezone
    plan = plan_tier(spec, row, facts, now=now, trigger=trigger, tz=tz)
    if row is None and plan.quiet:
        return None  # a member without a row is on the base tier: nothing to store
    if not plan.stored_ok:
        await repository.save_member_tier(conn, programme_id, member_id, **plan.values)
    if plan.quiet:
        return None
    decision = plan.decision
    bonus = None
    if decision.kind == "promoted":
        bonus = await _promotion_bonus(conn, spec, programme_id, member_id, decision.to_tier, tz)
    external = None
    if decision.from_tier != decision.to_tier:
        external = await repository.member_external_id(conn, programme_id, member_id) or ""
    history, events = tier_records(
        plan, facts, now=now, trigger=trigger, actor=actor, external_id=external, bonus=bonus
    )
    for values in history:
        await repository.add_history(conn, programme_id, member_id, **values)
    for event in events:
        # On Citus an event nobody subscribed to stays out of the outbox (as the ledger's and
        # activity_event_apply's do there): the assessment then writes the member's shard alone.
        await outbox.add_if_wanted(conn, programme_id, event["type"], event["subject"], event["payload"])
    return tier_change(plan, member_id, bonus)


async def _promotion_bonus(
    conn: AsyncConnection, spec: LadderSpec, programme_id: int, member_id: int, tier: str, tz: str
) -> dict[str, Any] | None:
    """The tier's promotion bonus, once per member, tier and ladder version (the idempotency
    key). A refused bonus (budget exhausted ...) does not undo the promotion: it is recorded."""
    bonus = spec.rules_of(tier).bonus
    if bonus is None:
        return None
    external = await repository.member_external_id(conn, programme_id, member_id) or ""
    key = f"tier-bonus:{member_id}:{tier}:{spec.version}"
    who = _System(programme_id=programme_id, programme_code="", role="operator", timezone=tz)
    request = ledger_schemas.EarnRequest(
        member_id=external,
        budget=bonus.budget,
        points=bonus.points,
        reference=key,
        reason=f"tier bonus: {tier}",
    )
    try:
        async with conn.begin_nested():
            posted = await ledger.earn(conn, who, request, key)
    except DomainError as exc:
        log.warning("tier bonus refused for member %s: %s", member_id, exc.code)
        return {"key": key, "status": "refused", "code": exc.code, "detail": exc.detail}
    return {"key": key, "status": "replayed" if posted.replayed else "posted", "points": bonus.points}


async def run_scheduled(
    conn: AsyncConnection, *, programme_id: int, now: datetime, batch: int = 1000
) -> tuple[int, bool]:
    """Re-assess one batch of the programme's due members, set-based. Returns (members
    updated, whether more may be due)."""
    spec = await _ladder(conn, programme_id, now)
    if spec is None:
        return 0, False
    tz = await repository.programme_timezone(conn, programme_id)
    statement = repository.scheduled_statement(
        programme_id=programme_id, spec=spec, now=now, tz=tz, batch=batch, actor=SCHEDULER
    )
    rows = await repository.run_scheduled(conn, statement)
    # Promotions at a scheduled run are rare (events promote at once): their bonus goes
    # through the ledger one by one.
    for row in rows:
        if row.kind == "promoted":
            await _promotion_bonus(conn, spec, programme_id, row.member_id, row.to_tier, tz)
    # Rows whose tier or pin the ladder no longer has take the per-member path.
    odd = await repository.due_outside_ladder(conn, programme_id, spec, now, batch)
    for member_id in odd:
        await assess_member(
            conn,
            programme_id=programme_id,
            member_id=member_id,
            now=now,
            trigger="scheduled",
            actor=SCHEDULER,
        )
    return len(rows) + len(odd), len(rows) >= batch or len(odd) >= batch


@dataclass(frozen=True, slots=True)
class ReassessSlice:
    """One keyset slice of a full re-evaluation."""

    members: int  # members assessed in the slice
    changed: int  # of which the stored tier row was written (created or changed)
    upto: int | None  # the slice's last member id; None: no ladder in force


async def next_reassess_slice(
    conn: AsyncConnection, *, programme_id: int, after: int, batch: int
) -> int | None:
    """Where the keyset slice after ``after`` ends (its last member id); None: none left."""
    return await repository.slice_end(conn, programme_id, after, batch)


async def reassess_slice(
    conn: AsyncConnection, *, programme_id: int, now: datetime, after: int, upto: int, actor: str
) -> ReassessSlice:
    """Re-assess the programme's members with ``after < id <= upto`` against the ladder in
    force, set-based: a due member as the scheduled job does, everyone else as an event does
    (promotion only); members without a tier row get one. Runs in the caller's transaction."""
    spec = await _ladder(conn, programme_id, now)
    if spec is None:
        return ReassessSlice(0, 0, None)
    await repository.lock_slice(conn, programme_id, after, upto)
    tz = await repository.programme_timezone(conn, programme_id)
    statement = repository.reassess_statement(
        programme_id=programme_id, spec=spec, now=now, tz=tz, after=after, upto=upto, actor=actor
    )
    rows = await repository.run_scheduled(conn, statement)
    for row in rows:
        if row.kind == "promoted":
            await _promotion_bonus(conn, spec, programme_id, row.member_id, row.to_tier, tz)
    return ReassessSlice(len(rows), sum(1 for row in rows if row.written), upto)


# --- pins ------------------------------------------------------------------------------------


async def pin(conn: AsyncConnection, who: Principal, external_id: str, req: s.PinRequest) -> s.MemberTierView:
    now = _now()
    _aware("until", req.until)
    if req.until is not None and req.until <= now:
        raise InvalidInput("until", "must be in the future")
    member_id = await _member(conn, who, external_id)
    spec = await _ladder(conn, who.programme_id, now)
    if spec is None:
        raise _no_ladder()
    if not spec.has(req.tier):
        raise InvalidInput("tier", "is not a tier of the published ladder")
    row = await repository.lock_member_tier(conn, who.programme_id, member_id)
    before = _tier_state(row)
    if row is None:
        base = spec.ladder.base.code
        await repository.ensure_member_tier(
            conn, who.programme_id, member_id, tier=base, ladder_version=spec.version, at=now
        )
        row = await repository.lock_member_tier(conn, who.programme_id, member_id)
    state = state_for(spec, row)
    current = state.tier if state else spec.ladder.base.code
    await repository.save_member_tier(
        conn,
        who.programme_id,
        member_id,
        tier=current,
        rank=spec.ladder.tier(current).rank,
        ladder_version=spec.version,
        achieved_at=state.achieved_at if state else now,
        valid_until=state.valid_until if state else None,
        grace_until=state.grace_until if state else None,
        pin_kind=req.kind,
        pin_tier=req.tier,
        pin_until=req.until,
        pin_reason=req.reason,
    )
    await repository.add_history(
        conn, who.programme_id, member_id, at=now, kind="pin_set", reason=req.reason,
        from_tier=current, to_tier=current, ladder_version=spec.version,
        trace={"pin": {"kind": req.kind, "tier": req.tier, "until": msgspec.to_builtins(req.until),
                       "reason": req.reason}},
        facts={}, actor=who.actor,
    )  # fmt: skip
    # core: whoever sets a pin runs a scheduled decision at once.
    change = await assess_member(
        conn,
        programme_id=who.programme_id,
        member_id=member_id,
        now=now,
        trigger="scheduled",
        actor=who.actor,
    )
    view = await _tier_view(conn, who, external_id, member_id, now, change)
    return await _audit_tier(conn, who, "member.tier_pin", external_id, before, view, req.reason)


async def unpin(
    conn: AsyncConnection, who: Principal, external_id: str, req: s.UnpinRequest
) -> s.MemberTierView:
    now = _now()
    member_id = await _member(conn, who, external_id)
    row = await repository.lock_member_tier(conn, who.programme_id, member_id)
    if row is None or row["pin_kind"] is None:
        raise NotFound("The member has no pin.", code="no_pin", extra={"member_id": external_id})
    await repository.clear_pin(conn, who.programme_id, member_id)
    await repository.add_history(
        conn, who.programme_id, member_id, at=now, kind="pin_removed", reason=req.reason,
        from_tier=row["tier"], to_tier=row["tier"], ladder_version=row["ladder_version"],
        trace={"pin": {"kind": row["pin_kind"], "tier": row["pin_tier"],
                       "until": msgspec.to_builtins(row["pin_until"]), "reason": row["pin_reason"]}},
        facts={}, actor=who.actor,
    )  # fmt: skip
    change = await assess_member(
        conn,
        programme_id=who.programme_id,
        member_id=member_id,
        now=now,
        trigger="scheduled",
        actor=who.actor,
    )
    view = await _tier_view(conn, who, external_id, member_id, now, change)
    return await _audit_tier(conn, who, "member.tier_unpin", external_id, _tier_state(row), view, req.reason)


async def assess(conn: AsyncConnection, who: Principal, external_id: str) -> s.MemberTierView:
    """Operator: assess the member now, as an event would (promotion only)."""
    now = _now()
    member_id = await _member(conn, who, external_id)
    if await _ladder(conn, who.programme_id, now) is None:
        raise _no_ladder()
    before = _tier_state(await repository.get_member_tier(conn, who.programme_id, member_id))
    change = await assess_member(
        conn, programme_id=who.programme_id, member_id=member_id, now=now, trigger="event", actor=who.actor
    )
    view = await _tier_view(conn, who, external_id, member_id, now, change)
    return await _audit_tier(conn, who, "member.tier_assess", external_id, before, view)


def _tier_state(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the audit trail keeps of a member's tier row: the tier and the pin."""
    if row is None:
        return None
    pin = None
    if row["pin_kind"] is not None:
        pin = {
            "kind": row["pin_kind"],
            "tier": row["pin_tier"],
            "until": row["pin_until"],
            "reason": row["pin_reason"],
        }
    return {"tier": row["tier"], "pin": pin}


async def _audit_tier(
    conn: AsyncConnection,
    who: Principal,
    action: str,
    external_id: str,
    before: dict[str, Any] | None,
    view: s.MemberTierView,
    reason: str | None = None,
) -> s.MemberTierView:
    after = {"tier": view.tier, "pin": view.pin}
    await audit.record(
        conn,
        who,
        action=action,
        entity="member",
        entity_id=external_id,
        before=before,
        after=after,
        reason=reason,
    )
    return view


# --- reads -----------------------------------------------------------------------------------


def _progress(
    tier: str, rule: Literal["entry", "retention"], explanation: rules.Explanation
) -> s.RuleProgress:
    return s.RuleProgress(
        tier=tier,
        rule=rule,
        met=explanation.passed,
        explanation=msgspec.to_builtins(explanation),
    )


async def _tier_view(
    conn: AsyncConnection,
    who: Principal,
    external_id: str,
    member_id: int,
    now: datetime,
    change: TierChange | None = None,
) -> s.MemberTierView:
    return (await _tier_parts(conn, who, external_id, member_id, now, change))[0]


async def _tier_parts(
    conn: AsyncConnection,
    who: Principal,
    external_id: str,
    member_id: int,
    now: datetime,
    change: TierChange | None = None,
) -> tuple[s.MemberTierView, rules.Explanation | None, rules.Explanation | None]:
    """The member's tier view, with the next tier's entry and the current tier's retention
    rule explained (None at the top / on the base tier)."""
    spec = await _ladder(conn, who.programme_id, now)
    if spec is None:
        raise _no_ladder()
    row = await repository.get_member_tier(conn, who.programme_id, member_id)
    facts = await load_facts(conn, programme_id=who.programme_id, member_id=member_id, now=now)
    assert facts is not None  # the member was just found
    state = state_for(spec, row)
    code = state.tier if state else spec.ladder.base.code
    current = spec.rules_of(code)
    above = core.next_tier_target(spec.ladder, code)
    pin = state.pin if state else None
    progress = rules.explain(spec.rules_of(above.code).entry, facts) if above else None
    keep = rules.explain(current.retention, facts) if current.tier.rank else None
    view = s.MemberTierView(
        member_id=external_id,
        tier=code,
        rank=current.tier.rank,
        ladder_version=spec.version,
        achieved_at=state.achieved_at if state else None,
        valid_until=state.valid_until if state else None,
        grace_until=state.grace_until if state else None,
        pin=s.PinView(kind=pin.kind, tier=pin.tier, until=pin.until, reason=pin.reason) if pin else None,
        next_assessment_at=row["next_assessment_at"] if row else None,
        next_tier=above.code if above else None,
        progress=_progress(above.code, "entry", progress) if above and progress else None,
        keep=_progress(code, "retention", keep) if keep else None,
        change=s.ChangeView(
            kind=change.kind, reason=change.reason, from_tier=change.from_tier, to_tier=change.to_tier
        )
        if change
        else None,
    )
    return view, progress, keep


async def member_tier(conn: AsyncConnection, who: Principal, external_id: str) -> s.MemberTierView:
    member_id = await _member(conn, who, external_id)
    return await _tier_view(conn, who, external_id, member_id, _now())


async def history(conn: AsyncConnection, who: Principal, external_id: str, limit: int) -> s.HistoryPage:
    member_id = await _member(conn, who, external_id)
    rows = await repository.history(conn, who.programme_id, member_id, limit)
    return s.HistoryPage(items=[s.HistoryItem(**r) for r in rows])


def _gaps(explanation: rules.Explanation) -> list[s.Gap]:
    if isinstance(explanation, rules.ConditionExplanation):
        if not explanation.passed and explanation.gap is not None:
            return [s.Gap(fact=explanation.fact, needed=explanation.gap)]
        return []
    if explanation.kind == "not":
        return []  # "more" of a negated fact does not help
    return [gap for child in explanation.children for gap in _gaps(child)]


async def my_tier(conn: AsyncConnection, who: Principal) -> s.MyTierView:
    """The customer's own tier; the token names the member, never a parameter."""
    external_id = who.member_external_id or ""
    member_id = await _member(conn, who, external_id)
    view, progress, keep = await _tier_parts(conn, who, external_id, member_id, _now())
    return s.MyTierView(
        tier=view.tier,
        valid_until=view.valid_until,
        grace_until=view.grace_until,
        next_tier=view.next_tier,
        next_tier_met=progress.passed if progress else False,
        next_tier_gaps=_gaps(progress) if progress else [],
        keep_met=keep.passed if keep else True,
        keep_gaps=_gaps(keep) if keep else [],
    )
