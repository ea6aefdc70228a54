"""Members: enrolment by the brand's customer id, CRM attributes, member tokens for apps."""

from __future__ import annotations

import base64
from typing import Literal

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.errors import InvalidInput, NotFound
from loyalty.http.principal import Principal
from loyalty.idempotency import fingerprint as request_fingerprint
from loyalty.ledger import repository as ledger
from loyalty.members import repository
from loyalty.members import schemas as s

MAX_ATTRIBUTES = 64


def _attributes_json(attributes: dict | None) -> str | None:
    if attributes is None:
        return None
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidInput("attributes", f"at most {MAX_ATTRIBUTES} keys")
    raw = msgspec.json.encode(attributes)
    if len(raw) > 16_384:
        raise InvalidInput("attributes", "at most 16 KiB of JSON")
    return raw.decode()


def _not_found(member_id: str) -> NotFound:
    return NotFound(
        "No member with this id in the programme.", code="member_not_found", extra={"member_id": member_id}
    )


async def enrol(
    conn: AsyncConnection, who: Principal, req: s.MemberCreate, key: str | None
) -> tuple[bool, bytes]:
    fingerprint = request_fingerprint("enrol", req)
    stored = await ledger.claim_key(conn, who.programme_id, key, fingerprint)
    if stored is not None:
        return True, stored.encode()
    await repository.enrol(conn, who.programme_id, req.member_id, _attributes_json(req.attributes) or "{}")
    view = await get(conn, who, req.member_id)
    await audit.record(
        conn, who, action="member.create", entity="member", entity_id=req.member_id, after=view
    )
    body = msgspec.json.encode(view)
    await ledger.store_key(conn, who.programme_id, key, 201, body)
    return False, body


async def get(conn: AsyncConnection, who: Principal, member_id: str) -> s.MemberView:
    row = await repository.get(conn, who.programme_id, member_id)
    if row is None:
        raise _not_found(member_id)
    return s.MemberView(**row)


async def update(conn: AsyncConnection, who: Principal, member_id: str, req: s.MemberUpdate) -> s.MemberView:
    before = await repository.get(conn, who.programme_id, member_id)
    row = await repository.update(
        conn, who.programme_id, member_id, _attributes_json(req.attributes), req.status
    )
    if row is None:
        raise _not_found(member_id)
    await audit.record(
        conn, who, action="member.update", entity="member", entity_id=member_id, before=before, after=row
    )
    return s.MemberView(**row)


async def page(conn: AsyncConnection, who: Principal, cursor: str | None, limit: int) -> s.MemberPage:
    after = _decode_cursor(cursor) if cursor else None
    rows = await repository.page(conn, who.programme_id, after, limit + 1)
    more = len(rows) > limit
    items = [s.MemberView(**r) for r in rows[:limit]]
    next_cursor = _encode_cursor(items[-1].member_id) if more and items else None
    return s.MemberPage(items=items, next_cursor=next_cursor)


def attribute_query(query: str) -> tuple[str, str]:
    """``key = value`` (spaces around either are ignored) as (key, value)."""
    key, sep, value = query.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise InvalidInput("q", "write an attribute search as key = value, e.g. email = ann@example.com")
    return key, value


def _attribute_docs(key: str, value: str) -> list[str]:
    """The attribute documents that match ``value``: as text, and also as the JSON number or
    boolean it spells (a CRM may have sent {"age": 30} or {"age": "30"})."""
    docs = [msgspec.json.encode({key: value}).decode()]
    try:
        literal = msgspec.json.decode(value)
    except msgspec.DecodeError:
        literal = None
    if isinstance(literal, bool | int | float) and not isinstance(literal, str):
        docs.append(msgspec.json.encode({key: literal}).decode())
    return docs


async def search(
    conn: AsyncConnection,
    who: Principal,
    *,
    query: str,
    by: Literal["id", "attribute"],
    cursor: str | None,
    limit: int,
) -> s.MemberPage:
    """Members whose id starts with ``query`` (an exact id comes first), or, ``by`` attribute,
    whose attributes hold ``key = value``; pages of ``limit`` in id order, each an index range."""
    query = query.strip()
    if not query:
        raise InvalidInput("q", "type a member id, or the beginning of one")
    after = _decode_cursor(cursor) if cursor else None
    if by == "attribute":
        key, value = attribute_query(query)
        rows = await repository.search(
            conn, who.programme_id, attribute_docs=_attribute_docs(key, value), after=after, limit=limit + 1
        )
    else:
        rows = await repository.search(conn, who.programme_id, id_prefix=query, after=after, limit=limit + 1)
    more = len(rows) > limit
    items = [s.MemberView(**r) for r in rows[:limit]]
    return s.MemberPage(
        items=items, next_cursor=_encode_cursor(items[-1].member_id) if more and items else None
    )


def _encode_cursor(member_id: str) -> str:
    return base64.urlsafe_b64encode(b"m:" + member_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("m:") or len(raw) < 3:
        raise InvalidInput("cursor", "is not a cursor this API returned")
    return raw[2:]
