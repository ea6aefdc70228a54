"""A refund event: the order's remaining amount, the proportional clawback of what the order
earned, the facts and the tier, in the caller's transaction."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import core, repository
from loyalty.activity import schemas as s
from loyalty.activity.event_config import EventConfig, local_day
from loyalty.activity.event_result import assess_tier, build_result, outcome_json, with_points
from loyalty.activity.facts import row_to_facts
from loyalty.auth.core import Principal
from loyalty.errors import DomainError, InvalidInput
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger


async def record_refund(
    conn: AsyncConnection,
    who: Principal,
    req: s.EventIn,
    config: EventConfig,
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
        day = local_day(history["ordered_at"], who.timezone)
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
        facts = with_points(base, points, qualifying if qualifies else 0)
    # An event never demotes (the schedule does); a refund may still meet a pin's expiry.
    change = await assess_tier(conn, who, member_id, now, config, facts)
    result = build_result(req, occurred_at, [], clawback, facts, change, simulate, points=points)
    await repository.finish_event(
        conn, who.programme_id, member_id, row_id, amount, points, outcome_json(result, qualifying),
        msgspec.to_builtins(result),
    )  # fmt: skip
    return result


def _refund_amount(req: s.EventIn, history: dict[str, Any]) -> int:
    left = history["order_amount"] - history["refunded"]
    if req.amount is None:
        return max(left, 0)  # a full refund: whatever of the order is not refunded yet
    if history["orders"] and req.amount > left:
        raise InvalidInput("amount", f"is more than the order has left to refund ({left})")
    return req.amount


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
