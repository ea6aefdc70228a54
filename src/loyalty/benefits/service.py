"""Benefit use cases: catalogue, tier benefits, campaigns, grants, entitlements, consumption.
Never commits: the caller's transaction (web.provide_tx, or a worker task) owns it."""

from __future__ import annotations

import base64
import calendar
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit, rules
from loyalty.activity.facts import load_facts, row_to_facts
from loyalty.auth.core import Principal
from loyalty.benefits import core, repository
from loyalty.benefits import schemas as s
from loyalty.errors import Conflict, DomainError, InvalidInput, NotFound
from loyalty.events import repository as outbox
from loyalty.segments import repository as segments

REQUIRED_LANGUAGES = ("en", "zh-CN")


def _now() -> datetime:
    return datetime.now(UTC)


def _member_not_found(external_id: str) -> NotFound:
    return NotFound(
        "No member with this id in the programme.", code="member_not_found", extra={"member_id": external_id}
    )


def _benefit_not_found(code: str) -> NotFound:
    return NotFound("No benefit with this code.", code="benefit_not_found", extra={"benefit": code})


def _def(row: dict[str, Any]) -> core.BenefitDef:
    return core.BenefitDef(
        id=int(row["id"]),
        code=row["code"],
        type=row["type"],
        params=dict(row["params"]),
        channels=tuple(row["channels"] or ()),
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        active=bool(row["active"]),
        names=dict(row["names"]),
        descriptions=dict(row["descriptions"]),
    )


def _view(row: dict[str, Any]) -> s.BenefitView:
    return s.BenefitView(**{k: v for k, v in row.items() if k != "id"})


@functools.lru_cache(maxsize=1024)
def parsed_rule(rule_json: str) -> rules.Rule:
    """Segment rules arrive as JSON text; parsing one is cached by its text."""
    return rules.parse_rule(msgspec.json.decode(rule_json))


def override_params(benefit: core.BenefitDef, override: dict[str, Any], path: str) -> dict[str, Any]:
    """A tier, campaign or grant may override the benefit's parameters; a quota's period stays
    the benefit's own (one usage row per period), only its limit may change."""
    if benefit.type == "quota" and set(override) - {"limit"}:
        raise InvalidInput(path, "a quota source may only override limit")
    core.check_params(benefit.type, core.merged(benefit.params, override), path)
    return dict(override)


async def _check_upgrade_tier(
    conn: AsyncConnection, who: Principal, params: dict[str, Any], path: str
) -> None:
    """An upgrade's tier must be on the programme's published ladder (the one in force or one
    published to take over later). Without any published ladder there is nothing to check
    against: the tier is accepted and the upgrade brings nothing until a ladder has it."""
    codes = await repository.ladder_tier_codes(conn, who.programme_id, _now())
    if codes is not None and params.get("tier") not in codes:
        raise InvalidInput(f"{path}.tier", "is not a tier of the programme's published ladder")


async def _source_params(
    conn: AsyncConnection, who: Principal, benefit: core.BenefitDef, override: dict[str, Any], path: str
) -> dict[str, Any]:
    """override_params, and for an upgrade the check of the tier it treats the member as."""
    params = override_params(benefit, override, path)
    if benefit.type == "upgrade":
        await _check_upgrade_tier(conn, who, core.merged(benefit.params, params), path)
    return params


# Catalogue -------------------------------------------------------------------------------


def _check_texts(names: dict[str, str], field: str) -> None:
    missing = [lang for lang in REQUIRED_LANGUAGES if not names.get(lang)]
    if missing:
        raise InvalidInput(field, f"needs a text in {', '.join(missing)}")


def _check_validity(valid_from: datetime | None, valid_until: datetime | None) -> None:
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise InvalidInput("valid_until", "must be after valid_from")


async def create(conn: AsyncConnection, who: Principal, req: s.BenefitCreate) -> s.BenefitView:
    _check_texts(req.names, "names")
    _check_validity(req.valid_from, req.valid_until)
    params = core.check_params(req.type, req.params)
    if req.type == "upgrade":
        await _check_upgrade_tier(conn, who, params, "params")
    row = await repository.create_benefit(
        conn,
        who.programme_id,
        {
            "code": req.code,
            "type": req.type,
            "names": req.names,
            "descriptions": req.descriptions,
            "params": params,
            "channels": req.channels,
            "valid_from": req.valid_from,
            "valid_until": req.valid_until,
        },
    )
    view = _view(row)
    await audit.record(conn, who, action="benefit.create", entity="benefit", entity_id=req.code, after=view)
    return view


async def _benefit(conn: AsyncConnection, who: Principal, code: str) -> core.BenefitDef:
    row = await repository.benefit(conn, who.programme_id, code)
    if row is None:
        raise _benefit_not_found(code)
    return _def(row)


async def get(conn: AsyncConnection, who: Principal, code: str) -> s.BenefitView:
    row = await repository.benefit(conn, who.programme_id, code)
    if row is None:
        raise _benefit_not_found(code)
    return _view(row)


async def list_all(conn: AsyncConnection, who: Principal) -> s.BenefitList:
    return s.BenefitList(items=[_view(r) for r in await repository.all_benefits(conn, who.programme_id)])


async def update(conn: AsyncConnection, who: Principal, code: str, req: s.BenefitUpdate) -> s.BenefitView:
    current_row = await repository.benefit(conn, who.programme_id, code)
    if current_row is None:
        raise _benefit_not_found(code)
    current = _def(current_row)
    values = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
    if req.names is not None:
        _check_texts(req.names, "names")
    if req.params is not None:
        if current.type == "quota" and req.params.get("period") != current.params.get("period"):
            raise InvalidInput(
                "params.period", "the period of a quota cannot change (usage is kept per period)"
            )
        values["params"] = core.check_params(current.type, req.params)
        if current.type == "upgrade":
            await _check_upgrade_tier(conn, who, values["params"], "params")
    _check_validity(req.valid_from or current.valid_from, req.valid_until or current.valid_until)
    row = await repository.update_benefit(conn, who.programme_id, code, values)
    assert row is not None
    view = _view(row)
    await audit.record(
        conn,
        who,
        action="benefit.update",
        entity="benefit",
        entity_id=code,
        before=_view(current_row),
        after=view,
    )
    return view


async def set_tier_benefits(
    conn: AsyncConnection, who: Principal, tier: str, req: s.TierBenefitsSet
) -> s.TierBenefitList:
    """Replaces what a tier includes. The ladder definition is not touched: the tier code is
    the link, so a benefit set for a tier that is not (yet) on the ladder simply applies to nobody."""
    items: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(req.benefits):
        benefit = await _benefit(conn, who, item.benefit)
        items.append(
            (benefit.id, await _source_params(conn, who, benefit, item.params, f"benefits[{i}].params"))
        )
    if len({b for b, _ in items}) != len(items):
        raise InvalidInput("benefits", "a benefit is listed twice")
    before = await list_tier_benefits(conn, who)
    await repository.set_tier_benefits(conn, who.programme_id, tier, items)
    after = await list_tier_benefits(conn, who)
    await audit.record(
        conn,
        who,
        action="tier_benefits.set",
        entity="tier",
        entity_id=tier,
        before=_of_tier(before, tier),
        after=_of_tier(after, tier),
    )
    return after


def _of_tier(listing: s.TierBenefitList, tier: str) -> dict[str, Any]:
    return {"benefits": [{"benefit": i.benefit, "params": i.params} for i in listing.items if i.tier == tier]}


async def list_tier_benefits(conn: AsyncConnection, who: Principal) -> s.TierBenefitList:
    rows = await repository.all_tier_benefits(conn, who.programme_id)
    return s.TierBenefitList(
        items=[s.TierBenefitView(tier=r["tier"], benefit=r["code"], params=r["params"]) for r in rows]
    )


async def create_campaign(conn: AsyncConnection, who: Principal, req: s.CampaignCreate) -> s.CampaignView:
    if req.ends_at <= req.starts_at:
        raise InvalidInput("ends_at", "must be after starts_at")
    if await segments.get(conn, who.programme_id, req.segment) is None:
        raise NotFound("No segment with this code.", code="segment_not_found", extra={"code": req.segment})
    benefit = await _benefit(conn, who, req.benefit)
    params = await _source_params(conn, who, benefit, req.params, "params")
    row = await repository.create_campaign(
        conn,
        who.programme_id,
        {
            "code": req.code,
            "segment": req.segment,
            "benefit_id": benefit.id,
            "starts_at": req.starts_at,
            "ends_at": req.ends_at,
            "params": params,
        },
    )
    view = s.CampaignView(benefit=req.benefit, **row)
    await audit.record(
        conn, who, action="benefit_campaign.create", entity="benefit_campaign", entity_id=req.code, after=view
    )
    return view


async def list_campaigns(conn: AsyncConnection, who: Principal) -> s.CampaignList:
    return s.CampaignList(
        items=[s.CampaignView(**r) for r in await repository.all_campaigns(conn, who.programme_id)]
    )


# Grants ----------------------------------------------------------------------------------


async def _member(conn: AsyncConnection, who: Principal, external_id: str) -> int:
    found = await repository.member(conn, who.programme_id, external_id)
    if found is None:
        raise _member_not_found(external_id)
    return found[0]


async def grant(conn: AsyncConnection, who: Principal, external_id: str, req: s.GrantCreate) -> s.GrantView:
    now = _now()
    if req.expires_at is not None and req.expires_at <= now:
        raise InvalidInput("expires_at", "must be in the future")
    member_id = await _member(conn, who, external_id)
    benefit = await _benefit(conn, who, req.benefit)
    params = await _source_params(conn, who, benefit, req.params, "params")
    row = await repository.insert_grant(
        conn,
        who.programme_id,
        {
            "member_id": member_id,
            "benefit_id": benefit.id,
            "params": params,
            "reason": req.reason,
            "actor": who.actor,
            "expires_at": req.expires_at,
        },
    )
    await outbox.add(
        conn,
        who.programme_id,
        "benefit.granted",
        f"member:{external_id}",
        {
            "member_id": external_id,
            "benefit": benefit.code,
            "source": {"kind": "grant", "ref": str(row["id"])},
            "params": core.merged(benefit.params, params),
            "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
            "reason": req.reason,
        },
    )
    view = s.GrantView(
        id=row["id"],
        member_id=external_id,
        benefit=benefit.code,
        granted_at=row["granted_at"],
        expires_at=row["expires_at"],
    )
    await audit.record(
        conn,
        who,
        action="member.benefit_grant",
        entity="member",
        entity_id=external_id,
        after={**msgspec.to_builtins(view), "params": params},
        reason=req.reason,
    )
    return view


async def revoke(
    conn: AsyncConnection, who: Principal, external_id: str, grant_id: int, req: s.RevokeRequest
) -> None:
    member_id = await _member(conn, who, external_id)
    before = await repository.grant_state(conn, who.programme_id, member_id, grant_id)
    row = await repository.revoke_grant(conn, who.programme_id, member_id, grant_id, req.reason, _now())
    if row is None or before is None:
        raise NotFound("No such grant for this member.", code="grant_not_found", extra={"grant_id": grant_id})
    await audit.record(
        conn,
        who,
        action="member.benefit_revoke",
        entity="member",
        entity_id=external_id,
        before=before,
        after=await repository.grant_state(conn, who.programme_id, member_id, grant_id),
        reason=req.reason,
    )


# Entitlements ----------------------------------------------------------------------------


async def _sources(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    now: datetime,
    defs: dict[int, core.BenefitDef],
    *,
    only: core.BenefitDef | None = None,
    lock: bool = False,
) -> tuple[str | None, dict[int, list[core.Source]]]:
    """Every source of every benefit the member has now (or, with ``only``, of that one): tier,
    campaigns, grants, and what their upgrades bring. ``defs`` holds at least the programme's
    upgrade benefits (and ``only``). With ``lock`` the tier row and the grants relied on,
    upgrade grants included, are held FOR NO KEY UPDATE (see repository.active_grants)."""
    upgrade_ids = [b for b, d in defs.items() if d.type == "upgrade"]
    includes: dict[int, dict[str, dict[str, Any]]] | None = None
    ids: list[int] | None = None
    if only is not None:
        # An upgrade can bring the benefit only if some tier includes it; upgrades do not chain.
        if only.type == "upgrade":
            upgrade_ids = []
        includes = await repository.tier_map(conn, programme_id, only.id) if upgrade_ids else {}
        if not includes:
            upgrade_ids = []
        ids = [only.id, *upgrade_ids]
    found = await repository.member_tier(conn, programme_id, member_id, now, lock=lock)
    tier, stored_rank = found if found is not None else (None, 0)
    sources: dict[int, list[core.Source]] = {}
    if tier is not None:
        for b, params in (await repository.tier_benefit_params(conn, programme_id, tier, ids)).items():
            sources.setdefault(b, []).append(core.Source("tier", tier, params))
    running = await repository.active_campaigns(conn, programme_id, now, ids)
    if running:
        facts = await load_facts(conn, programme_id=programme_id, member_id=member_id, now=now)
        assert facts is not None
        for c in running:
            if rules.evaluate(parsed_rule(msgspec.json.encode(c["rule"]).decode()), facts):
                sources.setdefault(int(c["benefit_id"]), []).append(
                    core.Source("segment", c["code"], dict(c["params"]), c["ends_at"])
                )
    for g in await repository.active_grants(conn, programme_id, member_id, now, ids, lock=lock):
        sources.setdefault(int(g["benefit_id"]), []).append(
            core.Source("grant", str(g["id"]), dict(g["params"]), g["expires_at"])
        )
    upgrades = [(defs[b], x) for b in upgrade_ids if b in sources for x in sources[b]]
    if upgrades:
        ranks = await repository.ladder_ranks(conn, programme_id, now)
        lifts = core.lifts(upgrades, rank=core.member_rank(tier, stored_rank, ranks), ranks=ranks, now=now)
        if lifts:
            if includes is None:
                includes = await repository.tier_map(conn, programme_id)
            for b, by_tier in includes.items():
                benefit = defs.get(b)
                if benefit is None:
                    continue
                brought = core.through_upgrades(benefit, lifts, by_tier)
                if brought:
                    sources.setdefault(b, []).extend(brought)
    if only is not None:  # the upgrades were read only for what they bring
        sources = {only.id: sources[only.id]} if only.id in sources else {}
    return tier, sources


async def _defs(conn: AsyncConnection, programme_id: int) -> dict[int, core.BenefitDef]:
    return {int(r["id"]): _def(r) for r in await repository.all_benefits(conn, programme_id)}


async def _with_upgrades(
    conn: AsyncConnection, programme_id: int, benefit: core.BenefitDef
) -> dict[int, core.BenefitDef]:
    """The benefit and the programme's upgrade benefits: what _sources needs for ``only``."""
    defs = {int(r["id"]): _def(r) for r in await repository.upgrade_benefits(conn, programme_id)}
    defs[benefit.id] = benefit
    return defs


async def _benefit_with_upgrades(
    conn: AsyncConnection, who: Principal, code: str
) -> tuple[core.BenefitDef, dict[int, core.BenefitDef]]:
    """_benefit and _with_upgrades in one read: the benefit, and the definitions _sources needs."""
    defs = {
        int(r["id"]): _def(r) for r in await repository.benefit_with_upgrades(conn, who.programme_id, code)
    }
    benefit = next((d for d in defs.values() if d.code == code), None)
    if benefit is None:
        raise _benefit_not_found(code)
    return benefit, defs


def source_view(source: core.Source) -> s.SourceView:
    via = source.via
    return s.SourceView(
        kind=source.kind,
        ref=source.ref,
        params=source.params,
        until=source.until,
        tier=source.tier,
        via=s.SourceRef(kind=via.kind, ref=via.ref, until=via.until) if via is not None else None,
    )


def source_ref(source: core.Source) -> dict[str, Any]:
    """A source as events name it: {kind, ref}, and for an upgrade the tier and its origin."""
    out: dict[str, Any] = {"kind": source.kind, "ref": source.ref}
    if source.via is not None:
        out["tier"] = source.tier
        out["via"] = {"kind": source.via.kind, "ref": source.via.ref}
    return out


async def member_entitlements(
    conn: AsyncConnection, programme_id: int, tz: str, member_id: int, now: datetime
) -> tuple[str | None, list[s.Entitlement]]:
    defs = await _defs(conn, programme_id)
    tier, sources = await _sources(conn, programme_id, member_id, now, defs)
    periods = {
        b: core.period_bounds(str(defs[b].params["period"]), now, tz)[0]
        for b in sources
        if b in defs and defs[b].type == "quota"
    }
    used = await repository.usage_in(conn, programme_id, member_id, periods)
    items: list[s.Entitlement] = []
    for b, found in sources.items():
        benefit = defs[b]
        decision = core.decide(benefit, found, used=used.get(b, 0), now=now, tz=tz, channel=None)
        if decision.source is None:  # inactive or out of its validity
            continue
        items.append(
            s.Entitlement(
                benefit=benefit.code,
                type=benefit.type,
                names=benefit.names,
                params=decision.params,
                source=source_view(decision.source),
                sources=[source_view(x) for x in found],
                channels=list(benefit.channels),
                limit=decision.limit,
                used=decision.used,
                remaining=decision.remaining,
                resets_at=decision.resets_at,
            )
        )
    items.sort(key=lambda e: e.benefit)
    return tier, items


async def entitlements(conn: AsyncConnection, who: Principal, external_id: str) -> s.Entitlements:
    member_id = await _member(conn, who, external_id)
    tier, items = await member_entitlements(conn, who.programme_id, who.timezone, member_id, _now())
    return s.Entitlements(member_id=external_id, tier=tier, items=items)


async def multiplier_for(conn: AsyncConnection, programme_id: int, member_id: int, now: datetime) -> Fraction:
    """The member's best active points multiplier (1 without one), upgrades included."""
    defs = await _defs(conn, programme_id)
    _, sources = await _sources(conn, programme_id, member_id, now, defs)
    best = Fraction(1)
    for b, found in sources.items():
        benefit = defs[b]
        if benefit.type != "multiplier":
            continue
        decision = core.decide(benefit, found, used=0, now=now, tz="UTC", channel=None)
        if decision.allowed:
            best = max(best, core.multiplier_of(decision.params))
    return best


# Consumption -----------------------------------------------------------------------------


def _refused(decision: core.Decision, member: str, benefit: str) -> Conflict:
    return Conflict(
        f"The member may not use this benefit: {decision.reason}.",
        code=decision.reason if decision.reason == "quota_exhausted" else "benefit_not_available",
        extra={
            "member_id": member,
            "benefit": benefit,
            "reason": decision.reason,
            "remaining": decision.remaining,
        },
    )


# One benefit_consume call: (call) -> its JSON answer, on whichever connection the caller holds.
ConsumeRunner = Callable[[repository.ConsumeCall], Awaitable[str]]
# A campaign started or a rule changed between two calls: ask again, a few times at most.
_SEGMENT_ROUNDS = 4
_ANSWER = msgspec.json.Decoder()


async def consume(
    conn: AsyncConnection,
    who: Principal,
    code: str,
    req: s.ConsumeRequest | s.ReserveRequest,
    *,
    reserve: bool,
) -> s.ConsumptionResult:
    """One use of the benefit for an order (reserve: pending until commit, release or timeout).
    Idempotent by (benefit, order_reference); 409 when the quota is exhausted. In the caller's
    transaction: the locks benefit_consume takes last until it ends."""
    return await consume_with(functools.partial(repository.consume_in, conn), who, code, req, reserve=reserve)


async def consume_with(
    run: ConsumeRunner,
    who: Principal,
    code: str,
    req: s.ConsumeRequest | s.ReserveRequest,
    *,
    reserve: bool,
) -> s.ConsumptionResult:
    """consume through ``run``: one call of benefit_consume, which decides and writes; two when
    campaigns are running for the benefit, whose segment rules are evaluated here between them."""
    now = _now()
    expires_at = now + timedelta(seconds=req.hold_seconds) if isinstance(req, s.ReserveRequest) else None
    call = repository.ConsumeCall(
        programme_id=who.programme_id,
        code=code,
        member=req.member_id,
        order_reference=req.order_reference,
        channel=req.channel,
        reserve=reserve,
        expires_at=expires_at,
        now=now,
        timezone=who.timezone,
    )
    for _ in range(_SEGMENT_ROUNDS):
        answer = _ANSWER.decode(await run(call))
        if answer["outcome"] != "segments":
            return _consumption(answer, code, req, expires_at)
        call = dataclasses.replace(call, segments=_segments_evaluated(answer, now))
    raise Conflict(
        "The benefit's campaigns kept changing while the use was decided; retry.",
        code="campaigns_changed",
        extra={"benefit": code},
    )


class _FactsRow:
    """benefit_consume's facts object seen as the row activity.facts.row_to_facts reads."""

    __slots__ = ("_mapping",)

    def __init__(self, values: dict[str, Any]) -> None:
        for name in ("last_order_at", "enrolled_at"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        self._mapping = values

    def __getattr__(self, name: str) -> Any:
        return self._mapping[name]


def _segments_evaluated(answer: dict[str, Any], now: datetime) -> str:
    """The running campaigns' rules evaluated on the member's facts: what benefit_consume's
    next call is told (each rule's stamp, so that one changed meanwhile is asked again)."""
    facts = row_to_facts(_FactsRow(answer["facts"]), now=now)
    campaigns = answer["campaigns"]
    matched = [
        c["code"]
        for c in campaigns
        if rules.evaluate(parsed_rule(msgspec.json.encode(c["rule"]).decode()), facts)
    ]
    seen = {c["code"]: c["stamp"] for c in campaigns}
    return msgspec.json.encode({"seen": seen, "matched": matched}).decode()


def _consumption(
    answer: dict[str, Any], code: str, req: s.ConsumeRequest | s.ReserveRequest, expires_at: datetime | None
) -> s.ConsumptionResult:
    """benefit_consume's answer as the route's result, or the domain error it names."""
    outcome = answer["outcome"]
    period = answer.get("period_start")
    period_start = date.fromisoformat(period) if period else None
    if outcome == "ok":
        return s.ConsumptionResult(
            member_id=req.member_id,
            benefit=code,
            order_reference=req.order_reference,
            state=answer["state"],
            period_start=period_start,
            limit=answer.get("limit"),
            remaining=answer.get("remaining"),
            expires_at=expires_at,
        )
    if outcome == "replayed":
        prior = answer.get("expires_at")
        return s.ConsumptionResult(
            member_id=req.member_id,
            benefit=code,
            order_reference=req.order_reference,
            state=answer["state"],
            replayed=True,
            period_start=period_start,
            expires_at=datetime.fromisoformat(prior) if prior else None,
        )
    if outcome == "refused":
        decision = core.Decision(False, answer["reason"], remaining=answer.get("remaining"))
        raise _refused(decision, req.member_id, code)
    error = answer["code"]
    if error == "benefit_not_found":
        raise _benefit_not_found(code)
    if error == "member_not_found":
        raise _member_not_found(req.member_id)
    if error == "member_not_active":
        raise Conflict(
            "The member is not active.", code="member_not_active", extra={"member_id": req.member_id}
        )
    if error == "order_reference_reused":
        raise Conflict(
            "This order reference was used for another member.",
            code="order_reference_reused",
            extra={"order_reference": req.order_reference, "benefit": code},
        )
    raise AssertionError(f"benefit_consume answered {answer!r}")


async def _consumed_event(
    conn: AsyncConnection,
    who: Principal,
    benefit: core.BenefitDef,
    external_id: str,
    order_reference: str,
    state: str,
    period_start: date | None,
    remaining: int | None,
    used: int | None = None,
) -> None:
    await outbox.add(
        conn,
        who.programme_id,
        "benefit.consumed",
        f"member:{external_id}",
        {
            "member_id": external_id,
            "benefit": benefit.code,
            "order_reference": order_reference,
            "state": state,
            "period_start": period_start.isoformat() if period_start else None,
            "remaining": remaining,
            "used": used,
        },
    )


async def settle(
    conn: AsyncConnection, who: Principal, code: str, order_reference: str, *, commit: bool
) -> s.ConsumptionResult:
    """commit: a reservation becomes a use. release: a reservation is dropped, or a committed
    use is given back (order cancelled). Both are idempotent."""
    benefit = await _benefit(conn, who, code)
    row = await repository.consumption(conn, who.programme_id, benefit.id, order_reference, lock=True)
    if row is None:
        raise NotFound(
            "No consumption for this order.",
            code="consumption_not_found",
            extra={"benefit": code, "order_reference": order_reference},
        )
    external_id = await _external_id(conn, who.programme_id, row["member_id"])
    state = row["state"]
    target: s.ConsumptionState = "committed" if commit else "released"
    replayed = state == target
    if commit and state == "released":
        raise Conflict(
            "The reservation was released (cancelled or timed out).",
            code="consumption_released",
            extra={"benefit": code, "order_reference": order_reference},
        )
    total: int | None = None
    if not replayed:
        if row["period_start"] is not None:
            delta_used = (1 if commit else -1) if state == "committed" or commit else 0
            delta_reserved = -1 if state == "reserved" else 0
            total = await repository.move_use(
                conn,
                who.programme_id,
                row["member_id"],
                benefit.id,
                row["period_start"],
                used=delta_used,
                reserved=delta_reserved,
            )
        await repository.set_consumption_state(conn, who.programme_id, row["id"], target)
        if commit:
            # The member's limit depends on their sources; the event carries the count instead.
            await _consumed_event(
                conn,
                who,
                benefit,
                external_id,
                order_reference,
                "committed",
                row["period_start"],
                None,
                total,
            )
    return s.ConsumptionResult(
        member_id=external_id,
        benefit=code,
        order_reference=order_reference,
        state=target,
        replayed=replayed,
        period_start=row["period_start"],
    )


async def _external_id(conn: AsyncConnection, programme_id: int, member_id: int) -> str:
    from sqlalchemy import select

    members = repository.members
    value = await conn.scalar(
        select(members.c.external_id).where(members.c.programme_id == programme_id, members.c.id == member_id)
    )
    return str(value)


async def release_expired(conn: AsyncConnection, now: datetime | None = None) -> int:
    return await repository.release_expired(conn, now or _now())


# Gifts -----------------------------------------------------------------------------------


async def grant_gifts(conn: AsyncConnection, who: Principal, now: datetime) -> int:
    """The day's one-time gifts of one programme: each active gift benefit pays its points from
    its budget through the ledger to the members entitled to it whose CRM attribute
    ``birthday`` ("MM-DD" or "YYYY-MM-DD") is today in the programme's time zone. Idempotent:
    the ledger key is per member, benefit and period, so a second run (or a second birthday in
    the same period) pays nothing. A budget's refusal skips that member and is logged by the
    caller's counts; it never fails the run."""
    from loyalty.ledger import schemas as ls
    from loyalty.ledger import service as ledger

    today = now.astimezone(ZoneInfo(who.timezone)).date()
    mmdd = f"{today.month:02d}-{today.day:02d}"
    if (today.month, today.day) == (2, 28) and not calendar.isleap(today.year):
        days = [mmdd, "02-29"]
    else:
        days = [mmdd]
    paid = 0
    for row in await repository.all_benefits(conn, who.programme_id):
        benefit = _def(row)
        if benefit.type != "gift" or core.availability(benefit, now, None) is not None:
            continue
        period = str(benefit.params.get("period", "year"))
        start = core.period_bounds(period, now, who.timezone)[0]
        whom = await _who_gets(conn, who, benefit.code, now)
        for day in days:
            after: str | None = None
            while True:
                page = await repository.entitled_members(
                    conn,
                    who.programme_id,
                    whom.benefit_id,
                    whom.tiers,
                    whom.segment_rules,
                    now,
                    after,
                    1000,
                    birthday=day,
                    upgrades=whom.upgrades,
                    ranks=whom.ranks,
                )
                for external_id in page:
                    paid += await _pay_gift(conn, who, benefit, external_id, start, ledger, ls)
                if len(page) < 1000:
                    break
                after = page[-1]
    return paid


async def _pay_gift(
    conn: AsyncConnection,
    who: Principal,
    benefit: core.BenefitDef,
    external_id: str,
    start: date,
    ledger: Any,
    ls: Any,
) -> int:
    member_id = await _member(conn, who, external_id)
    defs = await _with_upgrades(conn, who.programme_id, benefit)
    _, sources = await _sources(conn, who.programme_id, member_id, _now(), defs, only=benefit)
    source = core.best_source(benefit.type, sources.get(benefit.id, []), benefit.params)
    if source is None:
        return 0
    params = core.merged(benefit.params, source.params)
    key = f"benefit-gift:{benefit.code}:{external_id}:{start.isoformat()}"
    request = ls.EarnRequest(
        member_id=external_id,
        budget=params["budget"],
        points=int(params["points"]),
        reference=key,
        reason=f"gift {benefit.code}",
    )
    try:
        async with conn.begin_nested():
            posted = await ledger.earn(conn, who, request, key)
            if not posted.replayed:
                await outbox.add(
                    conn,
                    who.programme_id,
                    "benefit.granted",
                    f"member:{external_id}",
                    {
                        "member_id": external_id,
                        "benefit": benefit.code,
                        "source": source_ref(source),
                        "params": params,
                        "period_start": start.isoformat(),
                        "points": int(params["points"]),
                    },
                )
    except DomainError:
        return 0
    return 0 if posted.replayed else 1


# Campaign announcements ------------------------------------------------------------------


async def announce_campaign(
    conn: AsyncConnection, programme_id: int, campaign_id: int, now: datetime
) -> int | None:
    """A started campaign's benefit.granted events, one per active member of its segment now
    (one INSERT ... SELECT, written only if an endpoint subscribes), and the campaign marked
    announced, both in the caller's transaction: announced once however often this runs.
    Returns the events written, or None when nothing was done (another run holds the campaign
    or announced it, or its benefit is not giving yet: see core.announcement)."""
    row = await repository.claim_campaign(conn, programme_id, campaign_id, now)
    if row is None:
        return None
    benefit = _def(
        {**row, "code": row["benefit"], "params": row["benefit_params"], "names": {}, "descriptions": {}}
    )
    what = core.announcement(benefit, row["ends_at"], now)
    if what == "wait":
        return None
    written = 0
    if what == "announce" and row["rule"] is not None:  # a campaign whose segment is gone gives nothing
        payload = {
            "benefit": benefit.code,
            "source": {"kind": "segment", "ref": row["code"]},
            "params": core.merged(benefit.params, dict(row["params"])),
            "expires_at": row["ends_at"].isoformat(),
        }
        rule = parsed_rule(msgspec.json.encode(row["rule"]).decode())
        written = await repository.announce_campaign(conn, programme_id, rule, payload, now)
    await repository.mark_announced(conn, programme_id, campaign_id, now)
    return written


# Marketing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Whom:
    """Who gets a benefit, as the marketing SQL asks: the tiers including it, the rules of the
    running campaigns giving it, and the upgrade paths that bring it (ranks: the ladder in
    force)."""

    benefit_id: int
    tiers: list[str]
    segment_rules: list[rules.Rule]
    upgrades: list[repository.UpgradePath]
    ranks: dict[str, int]


async def _who_gets(conn: AsyncConnection, who: Principal, code: str, now: datetime) -> _Whom:
    benefit = await _benefit(conn, who, code)
    tier_map = await repository.tier_map(conn, who.programme_id)
    includes = tier_map.get(benefit.id, {})
    running = await repository.active_campaigns(conn, who.programme_id, now)
    segment_rules = [
        parsed_rule(msgspec.json.encode(c["rule"]).decode()) for c in running if c["benefit_id"] == benefit.id
    ]
    paths: list[repository.UpgradePath] = []
    ranks: dict[str, int] = {}
    if includes and benefit.type != "upgrade":
        upgrades = [
            u
            for u in map(_def, await repository.upgrade_benefits(conn, who.programme_id))
            if core.availability(u, now, None) is None
        ]
        ranks = await repository.ladder_ranks(conn, who.programme_id, now) if upgrades else {}
        for upgrade in upgrades:
            default = str(upgrade.params.get("tier") or "")
            for tier in sorted(includes):
                if tier not in ranks:  # not on the ladder in force: lifts nobody (core.lifts)
                    continue
                via_tiers = tuple(
                    sorted(
                        t
                        for t, params in tier_map.get(upgrade.id, {}).items()
                        if core.upgrade_tier(upgrade, core.Source("tier", t, params)) == tier
                    )
                )
                campaign_rules = tuple(
                    parsed_rule(msgspec.json.encode(c["rule"]).decode())
                    for c in running
                    if c["benefit_id"] == upgrade.id
                    and core.upgrade_tier(upgrade, core.Source("segment", c["code"], dict(c["params"])))
                    == tier
                )
                paths.append(
                    repository.UpgradePath(upgrade.id, tier, ranks[tier], default, via_tiers, campaign_rules)
                )
    return _Whom(benefit.id, sorted(includes), segment_rules, paths, ranks)


async def entitled_members(
    conn: AsyncConnection, who: Principal, code: str, cursor: str | None, limit: int
) -> s.EntitledMembers:
    now = _now()
    whom = await _who_gets(conn, who, code, now)
    after = _decode_cursor(cursor) if cursor else None
    ids = await repository.entitled_members(
        conn,
        who.programme_id,
        whom.benefit_id,
        whom.tiers,
        whom.segment_rules,
        now,
        after,
        limit + 1,
        upgrades=whom.upgrades,
        ranks=whom.ranks,
    )
    more = len(ids) > limit
    ids = ids[:limit]
    return s.EntitledMembers(items=ids, next_cursor=_encode_cursor(ids[-1]) if more and ids else None)


async def entitled_count(conn: AsyncConnection, who: Principal, code: str) -> s.EntitledCount:
    now = _now()
    whom = await _who_gets(conn, who, code, now)
    counts = await repository.entitled_count(
        conn,
        who.programme_id,
        whom.benefit_id,
        whom.tiers,
        whom.segment_rules,
        now,
        upgrades=whom.upgrades,
        ranks=whom.ranks,
    )
    return s.EntitledCount(
        benefit=code,
        total=counts["total"],
        by_tier=counts["tier"],
        by_segment=counts["segment"],
        by_grant=counts["grant"],
        by_upgrade=counts["upgrade"],
    )


def _encode_cursor(external_id: str) -> str:
    return base64.urlsafe_b64encode(b"e:" + external_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("e:") or len(raw) < 3:
        raise InvalidInput("cursor", "is not a cursor this API returned")
    return raw[2:]
