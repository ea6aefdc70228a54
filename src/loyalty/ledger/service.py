"""Ledger use cases. Each takes a connection inside the caller's transaction and never commits.

Where a point is earned, spent, held, clawed back or expires: here, and in the posting
functions of ledger/sql/ that these call (one round trip each).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.errors import InvalidInput, NotFound
from loyalty.http.principal import Principal
from loyalty.ledger import core, repository
from loyalty.ledger import schemas as s
from loyalty.ledger.repository import Posted, PostingConnection


def _now() -> datetime:
    return datetime.now(UTC)


def _expires_at(expiry: s.ExpiryIn | None, tz: str, earned_at: datetime) -> datetime | None:
    if expiry is None:
        return None
    return core.ExpiryPolicy(expiry.days, expiry.round_to).expires_at(earned_at, tz)


async def _audited(
    conn: PostingConnection,
    who: Principal,
    posting: Coroutine[Any, Any, Posted],
    *,
    action: str,
    entity: str,
    entity_id: str | int,
    view: Callable[[Any, Any], tuple[Any, Any]],
    reason: str | None = None,
    read_before: Callable[[], Awaitable[Any]] | None = None,
) -> Posted:
    """An operator's posting and its audit row in one transaction (on the HTTP path the posting
    connection is in autocommit: this opens a transaction around both). ``view`` turns the
    posting's answer, and what ``read_before`` read ahead of it, into (before, after). A replay
    changed nothing and records nothing."""
    try:
        async with audit.same_transaction(conn):
            prior = await read_before() if read_before is not None else None
            result = await posting
            if not result.replayed:
                before, after = view(audit.decoded(result.body), prior)
                await audit.record(
                    conn,
                    who,
                    action=action,
                    entity=entity,
                    entity_id=entity_id,
                    before=before,
                    after=after,
                    reason=reason,
                )
    finally:
        posting.close()  # a no-op once awaited; no "never awaited" warning if BEGIN failed
    return result


def _budget_state(budget: dict[str, Any], delta: int = 0) -> dict[str, Any]:
    """A budget's cap and remaining points before a change of ``delta`` (the answer is after it)."""
    return {
        "cap": budget["cap"] - delta,
        "remaining": budget["remaining"] - delta,
        "status": budget["status"],
    }


async def earn(conn: PostingConnection, who: Principal, req: s.EarnRequest, key: str | None) -> Posted:
    return await repository.post(conn, "ledger_earn", **earn_params(who, req, key))


def earn_params(who: Principal, req: s.EarnRequest, key: str | None) -> dict[str, Any]:
    """The arguments of ledger_earn, in order (callers that wrap the function use them too)."""
    now = _now()
    return dict(
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("earn", req),
        p_member=req.member_id,
        p_budget=req.budget,
        p_amount=req.points,
        p_partial=req.allow_partial,
        p_reference=req.reference,
        p_reason=req.reason,
        p_vests_at=core.vests_at(now, req.pending_days),
        p_expires_at=_expires_at(req.expiry, who.timezone, now),
        p_metadata=msgspec.json.encode(req.metadata).decode() if req.metadata else None,
        p_actor=who.actor,
    )


async def spend(conn: PostingConnection, who: Principal, req: s.SpendRequest, key: str | None) -> Posted:
    return await repository.post(
        conn,
        "ledger_spend",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("spend", req),
        p_member=req.member_id,
        p_amount=req.points,
        p_reference=req.reference,
        p_reason=req.reason,
        p_metadata=msgspec.json.encode(req.metadata).decode() if req.metadata else None,
        p_actor=who.actor,
    )


async def hold(conn: PostingConnection, who: Principal, req: s.HoldRequest, key: str | None) -> Posted:
    return await repository.post(
        conn,
        "ledger_hold",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("hold", req),
        p_member=req.member_id,
        p_amount=req.points,
        p_expires_at=_now() + timedelta(seconds=req.timeout_seconds),
        p_reference=req.reference,
        p_actor=who.actor,
    )


async def capture(
    conn: PostingConnection, who: Principal, hold_id: int, req: s.CaptureRequest, key: str | None
) -> Posted:
    return await repository.post(
        conn,
        "ledger_capture",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint(f"capture:{hold_id}", req),
        p_hold=hold_id,
        p_amount=req.points,
        p_actor=who.actor,
    )


async def void(conn: PostingConnection, who: Principal, hold_id: int, key: str | None) -> Posted:
    if not _is_operator(who):
        # Checkout code voids its own holds all day: the ledger entry is the record of that.
        return await _void(conn, who, hold_id, key)
    # An operator's void and its audit row are one transaction, on a connection of their own.
    async with repository.dedicated(conn) as own:
        return await _void(own, who, hold_id, key, audited=True)


async def _void(
    conn: PostingConnection, who: Principal, hold_id: int, key: str | None, *, audited: bool = False
) -> Posted:
    posting = repository.post(
        conn,
        "ledger_void",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint(f"void:{hold_id}", None),
        p_hold=hold_id,
        p_actor=who.actor,
    )

    def view(body: Any, _: Any) -> tuple[Any, Any]:
        # A void moves the whole hold from held back to available.
        held, amount = body["balance"], body["amount"]
        balance = {**held, "available": held["available"] - amount, "held": held["held"] + amount}
        common = {"member_id": body["member_id"], "amount": amount, "reference": body["reference"]}
        before = {**common, "status": "open", "balance": balance}
        return before, {
            **common,
            "status": body["status"],
            "balance": held,
            "transaction_id": body["transaction_id"],
        }

    if not audited:
        return await posting
    return await _audited(conn, who, posting, action="hold.void", entity="hold", entity_id=hold_id, view=view)


def _is_operator(who: Principal) -> bool:
    """An operator's change (an operator key, or a person in the console), not an integration's."""
    return who.operator_id is not None or who.role == "operator"


async def clawback(
    conn: PostingConnection, who: Principal, req: s.ClawbackRequest, key: str | None
) -> Posted:
    return await repository.post(
        conn,
        "ledger_clawback",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("clawback", req),
        p_member=req.member_id,
        p_reference=req.reference,
        p_amount=req.points,
        p_reason=req.reason,
        p_actor=who.actor,
    )


async def adjust(conn: PostingConnection, who: Principal, req: s.AdjustRequest, key: str | None) -> Posted:
    core.check_points("points", req.points, allow_negative=True)
    if req.points < 0 and req.expiry is not None:
        raise InvalidInput("expiry", "only a credit (positive points) can carry an expiry")
    posting = repository.post(
        conn,
        "ledger_adjust",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("adjust", req),
        p_member=req.member_id,
        p_amount=req.points,
        p_reason=req.reason,
        p_expires_at=_expires_at(req.expiry, who.timezone, _now()),
        p_unit_cost_micros=req.unit_cost_micros,
        p_actor=who.actor,
    )

    def view(body: Any, _: Any) -> tuple[Any, Any]:
        # Only the available bucket moves; the answer carries the balance after the entry.
        balance = body["balance"]
        before = {**balance, "available": balance["available"] - req.points}
        return before, {**balance, "transaction_id": body["transaction_id"], "amount": req.points}

    return await _audited(
        conn,
        who,
        posting,
        action="member.adjust_points",
        entity="member",
        entity_id=req.member_id,
        view=view,
        reason=req.reason,
    )


async def transfer(
    conn: PostingConnection, who: Principal, req: s.TransferRequest, key: str | None
) -> Posted:
    if req.from_member_id == req.to_member_id:
        raise InvalidInput("to_member_id", "must differ from from_member_id")
    return await repository.post(
        conn,
        "ledger_transfer",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("transfer", req),
        p_from=req.from_member_id,
        p_to=req.to_member_id,
        p_amount=req.points,
        p_reason=req.reason,
        p_actor=who.actor,
    )


async def earn_batch(
    conn: PostingConnection, who: Principal, req: s.BatchEarnRequest, key: str | None
) -> Posted:
    now = _now()
    items = req.items
    return await repository.post(
        conn,
        "ledger_earn_batch",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("earn_batch", req),
        p_members=[i.member_id for i in items],
        p_budgets=[i.budget for i in items],
        p_amounts=[i.points for i in items],
        p_references=[i.reference for i in items],
        p_reasons=[i.reason for i in items],
        p_vests_at=[core.vests_at(now, i.pending_days) for i in items],
        p_expires_at=[_expires_at(i.expiry, who.timezone, now) for i in items],
        p_all_or_nothing=req.mode == "all_or_nothing",
        p_actor=who.actor,
    )


# Budgets -----------------------------------------------------------------------------------


def _check_period(starts_at: datetime | None, ends_at: datetime | None) -> None:
    for field, value in (("starts_at", starts_at), ("ends_at", ends_at)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(field, "must carry a time zone offset, e.g. 2026-01-01T00:00:00Z")
    if starts_at and ends_at and ends_at <= starts_at:
        raise InvalidInput("ends_at", "must be after starts_at")


async def create_budget(
    conn: PostingConnection, who: Principal, req: s.BudgetCreate, key: str | None
) -> Posted:
    _check_period(req.starts_at, req.ends_at)
    if sorted(set(req.alert_thresholds)) != req.alert_thresholds:
        raise InvalidInput("alert_thresholds", "must be distinct percentages in increasing order")
    posting = repository.post(
        conn,
        "ledger_create_budget",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("budget", req),
        p_code=req.code,
        p_name=req.name,
        p_cap=req.cap,
        p_unit_cost_micros=req.unit_cost_micros,
        p_starts_at=req.starts_at,
        p_ends_at=req.ends_at,
        p_per_member_cap=req.per_member_cap,
        p_alert_thresholds=req.alert_thresholds,
        p_shards=req.shards,
        p_actor=who.actor,
    )
    return await _audited(
        conn,
        who,
        posting,
        action="budget.create",
        entity="budget",
        entity_id=req.code,
        view=lambda body, _: (None, body),
    )


async def top_up_budget(
    conn: PostingConnection, who: Principal, code: str, req: s.BudgetTopUp, key: str | None
) -> Posted:
    posting = repository.post(
        conn,
        "ledger_top_up_budget",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint(f"top_up:{code}", req),
        p_code=code,
        p_amount=req.points,
        p_reason=req.reason,
        p_actor=who.actor,
    )
    return await _audited(
        conn,
        who,
        posting,
        action="budget.top_up",
        entity="budget",
        entity_id=code,
        reason=req.reason,
        view=lambda body, _: (_budget_state(body, req.points), _budget_state(body)),
    )


async def move_budget(conn: PostingConnection, who: Principal, req: s.BudgetMove, key: str | None) -> Posted:
    if req.from_budget == req.to_budget:
        raise InvalidInput("to_budget", "must differ from from_budget")
    posting = repository.post(
        conn,
        "ledger_move_budget",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint("move", req),
        p_from=req.from_budget,
        p_to=req.to_budget,
        p_amount=req.points,
        p_reason=req.reason,
        p_actor=who.actor,
    )
    # One row per budget, so that each budget's own history shows the move.
    try:
        async with audit.same_transaction(conn):
            result = await posting
            if not result.replayed:
                body = audit.decoded(result.body)
                for side, delta in (("from", -req.points), ("to", req.points)):
                    budget = body[side]
                    after = {**_budget_state(budget), "transaction_id": body["transaction_id"]}
                    await audit.record(
                        conn,
                        who,
                        action="budget.move",
                        entity="budget",
                        entity_id=budget["code"],
                        before=_budget_state(budget, delta),
                        after=after,
                        reason=req.reason,
                    )
    finally:
        posting.close()
    return result


async def close_budget(conn: PostingConnection, who: Principal, code: str, key: str | None) -> Posted:
    posting = repository.post(
        conn,
        "ledger_close_budget",
        p_programme=who.programme_id,
        p_key=key,
        p_fingerprint=core.fingerprint(f"close:{code}", None),
        p_code=code,
        p_actor=who.actor,
    )

    async def read_before() -> Any:
        # In the close's transaction, just before it: what the budget had left when it closed.
        raw = await repository.budget(conn, who.programme_id, code)
        return None if raw is None else _budget_state(msgspec.json.decode(raw))

    return await _audited(
        conn,
        who,
        posting,
        action="budget.close",
        entity="budget",
        entity_id=code,
        read_before=read_before,
        view=lambda body, before: (before, _budget_state(body)),
    )


def _budget_view(raw: str) -> s.BudgetView:
    return msgspec.json.decode(raw, type=s.BudgetView)


async def get_budget(conn: AsyncConnection, who: Principal, code: str) -> s.BudgetView:
    raw = await repository.budget(conn, who.programme_id, code)
    if raw is None:
        raise NotFound(
            "No budget with this code in the programme.", code="budget_not_found", extra={"budget": code}
        )
    return _budget_view(raw)


async def list_budgets(conn: AsyncConnection, who: Principal) -> list[s.BudgetView]:
    return [_budget_view(raw) for raw in await repository.budgets(conn, who.programme_id)]


# Reads -------------------------------------------------------------------------------------


async def _member(conn: AsyncConnection, who: Principal, external_id: str) -> tuple[int, int]:
    ids = await repository.member_ids(conn, who.programme_id, external_id)
    if ids is None:
        raise NotFound(
            "No member with this id in the programme.",
            code="member_not_found",
            extra={"member_id": external_id},
        )
    return ids


async def balance(conn: AsyncConnection, who: Principal, external_id: str, soon_days: int = 30) -> s.Balance:
    member_id, _ = await _member(conn, who, external_id)
    row = await repository.balance(conn, who.programme_id, member_id, _now() + timedelta(days=soon_days))
    return s.Balance(**row)


async def expiring(conn: AsyncConnection, who: Principal, external_id: str, days: int) -> s.Expiring:
    member_id, _ = await _member(conn, who, external_id)
    rows = await repository.expiring(conn, who.programme_id, member_id, _now() + timedelta(days=days))
    items = [s.ExpiringItem(**r) for r in rows]
    return s.Expiring(member_id=external_id, days=days, total=sum(i.points for i in items), items=items)


async def open_lots(
    conn: AsyncConnection, who: Principal, external_id: str, limit: int = 200
) -> list[s.LotView]:
    """The member's lots that still hold points, in the order they are spent."""
    member_id, _ = await _member(conn, who, external_id)
    return [s.LotView(**r) for r in await repository.open_lots(conn, who.programme_id, member_id, limit)]


async def open_holds(conn: AsyncConnection, who: Principal, external_id: str) -> list[s.OpenHold]:
    member_id, _ = await _member(conn, who, external_id)
    return [s.OpenHold(**r) for r in await repository.open_holds(conn, who.programme_id, member_id)]


def encode_cursor(txn_id: int) -> str:
    return base64.urlsafe_b64encode(f"t:{txn_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, value = raw.partition(":")
        if tag != "t":
            raise ValueError(tag)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor", "is not a cursor this API returned") from None


async def history(
    conn: AsyncConnection,
    who: Principal,
    external_id: str,
    *,
    cursor: str | None,
    limit: int,
    kinds: Sequence[str] | None,
    reference: str | None,
    since: datetime | None,
    until: datetime | None,
) -> s.HistoryPage:
    member_id, _ = await _member(conn, who, external_id)
    rows = await repository.history(
        conn,
        who.programme_id,
        member_id,
        before_id=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
        kinds=kinds,
        reference=reference,
        since=since,
        until=until,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [s.HistoryItem(**r) for r in rows]
    return s.HistoryPage(items=items, next_cursor=encode_cursor(rows[-1]["id"]) if more else None)


async def transaction(conn: AsyncConnection, who: Principal, txn_id: int) -> dict[str, Any]:
    raw = await repository.transaction(conn, who.programme_id, txn_id)
    if raw is None:
        raise NotFound(
            "No transaction with this id in the programme.",
            code="transaction_not_found",
            extra={"transaction_id": txn_id},
        )
    body = msgspec.json.decode(raw)
    body["entries"] = await repository.entries(conn, who.programme_id, txn_id)
    return body


async def transactions_by_reference(conn: AsyncConnection, who: Principal, reference: str) -> list[Any]:
    return [
        msgspec.json.decode(raw)
        for raw in await repository.transactions_by_reference(conn, who.programme_id, reference)
    ]


async def get_hold(conn: AsyncConnection, who: Principal, hold_id: int) -> s.HoldResult:
    raw = await repository.hold(conn, who.programme_id, hold_id)
    if raw is None:
        raise NotFound(
            "No hold with this id in the programme.", code="hold_not_found", extra={"hold_id": hold_id}
        )
    return msgspec.json.decode(raw, type=s.HoldResult)


async def liability(conn: AsyncConnection, who: Principal, currency: str) -> s.LiabilityReport:
    lines = [s.LiabilityLine(**row) for row in await repository.liability(conn, who.programme_id)]
    return s.LiabilityReport(
        currency=currency,
        lines=lines,
        outstanding_points=sum(x.available + x.pending + x.held for x in lines),
        liability_micros=sum(x.liability_micros for x in lines),
        breakage_points=sum(x.breakage_points for x in lines),
        breakage_micros=sum(x.breakage_micros for x in lines),
    )
