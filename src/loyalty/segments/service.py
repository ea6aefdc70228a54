"""Segment use cases. Rules are validated on save (a RuleError names the path); never commits."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty import audit, rules
from loyalty.errors import InvalidInput, NotFound
from loyalty.facts.repository import load_facts
from loyalty.http.principal import Principal
from loyalty.programmes import repository as programmes
from loyalty.segments import repository
from loyalty.segments import schemas as s

_EXPORT_CHUNK = 5000
_LINE = msgspec.json.Encoder()


def _now() -> datetime:
    return datetime.now(UTC)


def _view(row: dict[str, Any]) -> s.SegmentView:
    return s.SegmentView(**row)


def _not_found(code: str) -> NotFound:
    return NotFound("No segment with this code.", code="segment_not_found", extra={"code": code})


async def _rule_of(conn: AsyncConnection, who: Principal, code: str) -> rules.Rule:
    row = await repository.get(conn, who.programme_id, code)
    if row is None:
        raise _not_found(code)
    return rules.parse_rule(row["rule"])


async def create(conn: AsyncConnection, who: Principal, req: s.SegmentCreate) -> s.SegmentView:
    rule = rules.parse_rule(req.rule)
    row = await repository.create(
        conn,
        who.programme_id,
        {"code": req.code, "name": req.name, "description": req.description, "rule": rules.to_json(rule)},
    )
    # Cached event configurations read segments: their version moves (no trigger does on Citus).
    await programmes.bump_config_version(conn, who.programme_id)
    view = _view(row)
    await audit.record(conn, who, action="segment.create", entity="segment", entity_id=req.code, after=view)
    return view


async def get(conn: AsyncConnection, who: Principal, code: str) -> s.SegmentView:
    row = await repository.get(conn, who.programme_id, code)
    if row is None:
        raise _not_found(code)
    return _view(row)


async def list_all(conn: AsyncConnection, who: Principal) -> s.SegmentList:
    return s.SegmentList(items=[_view(r) for r in await repository.all_(conn, who.programme_id)])


async def update(conn: AsyncConnection, who: Principal, code: str, req: s.SegmentUpdate) -> s.SegmentView:
    values: dict[str, Any] = {}
    if req.rule is not None:
        values["rule"] = rules.to_json(rules.parse_rule(req.rule))
    if req.name is not None:
        values["name"] = req.name
    if req.description is not None:
        values["description"] = req.description
    before = await repository.get(conn, who.programme_id, code)
    row = await repository.update_(conn, who.programme_id, code, values)
    if row is None or before is None:
        raise _not_found(code)
    await programmes.bump_config_version(conn, who.programme_id)
    view = _view(row)
    await audit.record(
        conn, who, action="segment.update", entity="segment", entity_id=code, before=_view(before), after=view
    )
    return view


async def delete(conn: AsyncConnection, who: Principal, code: str) -> None:
    before = await repository.get(conn, who.programme_id, code)
    if before is None or not await repository.delete_(conn, who.programme_id, code):
        raise _not_found(code)
    await programmes.bump_config_version(conn, who.programme_id)
    await audit.record(
        conn, who, action="segment.delete", entity="segment", entity_id=code, before=_view(before)
    )


async def members_page(
    conn: AsyncConnection, who: Principal, code: str, cursor: str | None, limit: int
) -> s.SegmentMembers:
    rule = await _rule_of(conn, who, code)
    after = _decode_cursor(cursor) if cursor else None
    ids = await repository.member_page(conn, who.programme_id, rule, _now(), after, limit + 1)
    more = len(ids) > limit
    ids = ids[:limit]
    return s.SegmentMembers(items=ids, next_cursor=_encode_cursor(ids[-1]) if more and ids else None)


async def export_members(engine: AsyncEngine, who: Principal, rule: rules.Rule) -> AsyncIterator[bytes]:
    """Every member of the segment as NDJSON lines ({"member_id": ...}), read in one snapshot on
    a connection of its own that lives as long as the response streams."""
    async with engine.connect() as conn:
        async for ids in repository.stream_members(conn, who.programme_id, rule, _now(), _EXPORT_CHUNK):
            yield b"".join(_LINE.encode({"member_id": member_id}) + b"\n" for member_id in ids)


async def count_rule(conn: AsyncConnection, who: Principal, rule_json: Any) -> int:
    """How many members a rule selects now, before it is saved (a RuleError names the path):
    the builder's live count. Nothing is written."""
    rule = rules.parse_rule(rule_json)
    return await repository.count(conn, who.programme_id, rule, _now())


async def stream_member_ids(
    engine: AsyncEngine, who: Principal, rule: rules.Rule
) -> AsyncIterator[list[str]]:
    """Every member id of the segment in order, in chunks, from one snapshot on a connection
    of its own that lives as long as the caller iterates (for CSV exports)."""
    async with engine.connect() as conn:
        async for ids in repository.stream_members(conn, who.programme_id, rule, _now(), _EXPORT_CHUNK):
            yield ids


async def segment_rule(conn: AsyncConnection, who: Principal, code: str) -> rules.Rule:
    """The segment's rule; 404 when the programme has no such segment."""
    return await _rule_of(conn, who, code)


async def count(conn: AsyncConnection, who: Principal, code: str) -> s.SegmentCount:
    rule = await _rule_of(conn, who, code)
    return s.SegmentCount(code=code, count=await repository.count(conn, who.programme_id, rule, _now()))


async def member_segments(conn: AsyncConnection, who: Principal, external_id: str) -> s.MemberSegments:
    """Which segments one member is in: the rules evaluated in memory on the member's facts."""
    member_id = await repository.member_id(conn, who.programme_id, external_id)
    if member_id is None:
        raise NotFound(
            "No member with this id in the programme.",
            code="member_not_found",
            extra={"member_id": external_id},
        )
    facts = await load_facts(conn, programme_id=who.programme_id, member_id=member_id, now=_now())
    assert facts is not None
    inside = [
        row["code"]
        for row in await repository.all_(conn, who.programme_id)
        if rules.evaluate(rules.parse_rule(row["rule"]), facts)
    ]
    return s.MemberSegments(member_id=external_id, segments=inside)


def _encode_cursor(external_id: str) -> str:
    return base64.urlsafe_b64encode(b"s:" + external_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("s:") or len(raw) < 3:
        raise InvalidInput("cursor", "is not a cursor this API returned")
    return raw[2:]
