"""History in bulk: POST /v1/events/import."""

from __future__ import annotations

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.activity import repository
from loyalty.activity import schemas as s
from loyalty.activity.event_config import check_event, now_utc
from loyalty.activity.recording import record
from loyalty.auth.core import Principal
from loyalty.errors import InvalidInput, NotFound


async def import_events(conn: AsyncConnection, who: Principal, req: s.ImportRequest) -> s.ImportResult:
    """History in bulk. Without earning: one INSERT for the events and their activity days, one
    refresh of the programme's facts. With earn=true each event goes through record() in order."""
    now = now_utc()
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
