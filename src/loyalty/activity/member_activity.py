"""One member's activity as staff read it (facts, events) and their tags."""

from __future__ import annotations

import base64

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.activity import repository
from loyalty.activity import schemas as s
from loyalty.activity.event_config import now_utc
from loyalty.activity.facts import facts_to_json, load_facts
from loyalty.auth.core import Principal
from loyalty.errors import InvalidInput, NotFound


def member_not_found(member_id: str) -> NotFound:
    return NotFound(
        "No member with this id in the programme.", code="member_not_found", extra={"member_id": member_id}
    )


async def internal_member_id(conn: AsyncConnection, who: Principal, external_id: str) -> int:
    found = await repository.member(conn, who.programme_id, external_id)
    if found is None:
        raise member_not_found(external_id)
    return found[0]


async def member_facts(conn: AsyncConnection, who: Principal, external_id: str) -> s.FactsView:
    member_id = await internal_member_id(conn, who, external_id)
    now = now_utc()
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
    member_id = await internal_member_id(conn, who, external_id)
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
    member_id = await internal_member_id(conn, who, external_id)
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
