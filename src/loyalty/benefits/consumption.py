"""Uses of a benefit for an order: consume (a use now) and reserve (pending until commit,
release or timeout), idempotent by (benefit, order_reference), decided and written by the
benefit_consume SQL function; commit and release of a consumption; reservations timing out."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import distribution, rules
from loyalty.benefits import core, events, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.catalogue import benefit_not_found, load_benefit, utcnow
from loyalty.benefits.entitlements import member_not_found, parsed_rule
from loyalty.errors import Conflict, NotFound
from loyalty.facts.repository import row_to_facts
from loyalty.http.principal import Principal


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
    now = utcnow()
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
    """benefit_consume's facts object seen as the row facts.repository.row_to_facts reads."""

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
        raise benefit_not_found(code)
    if error == "member_not_found":
        raise member_not_found(req.member_id)
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
    await events.emit(
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


def _no_consumption(code: str, order_reference: str) -> NotFound:
    return NotFound(
        "No consumption for this order.",
        code="consumption_not_found",
        extra={"benefit": code, "order_reference": order_reference},
    )


async def settle(
    conn: AsyncConnection,
    who: Principal,
    code: str,
    order_reference: str,
    *,
    commit: bool,
    member: str | None = None,
) -> s.ConsumptionResult:
    """commit: a reservation becomes a use. release: a reservation is dropped, or a committed
    use is given back (order cancelled). Both are idempotent. ``member`` (the external id the
    order was used for, optional) finds the consumption among that member's alone: on Citus the
    whole call then stays on the member's shard."""
    benefit = await load_benefit(conn, who, code)
    member_id: int | None = None
    if member is not None:
        found = await repository.member(conn, who.programme_id, member)
        if found is None:
            raise _no_consumption(code, order_reference)
        member_id = found[0]
    if distribution.Layout.citus:
        if member_id is None:
            # Found on every shard first (Citus locks rows on one shard at a time), then locked.
            first = await repository.consumption(conn, who.programme_id, benefit.id, order_reference)
            if first is None:
                raise _no_consumption(code, order_reference)
            member_id = int(first["member_id"])
        await repository.route_to_member(conn, member_id)
    row = await repository.consumption(
        conn, who.programme_id, benefit.id, order_reference, lock=True, member_id=member_id
    )
    if row is None:
        raise _no_consumption(code, order_reference)
    external_id = (
        member
        if member is not None
        else await repository.external_id(conn, who.programme_id, row["member_id"])
    )
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
        await repository.set_consumption_state(conn, who.programme_id, row["member_id"], row["id"], target)
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


async def release_expired(conn: AsyncConnection, now: datetime | None = None) -> int:
    return await repository.release_expired(conn, now or utcnow())
