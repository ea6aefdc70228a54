"""SQL of members."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.errors import Conflict

_COLUMNS = "external_id AS member_id, status, attributes, enrolled_at, updated_at"


async def enrol(conn: AsyncConnection, programme_id: int, external_id: str, attributes_json: str) -> None:
    try:
        async with conn.begin_nested():
            await conn.execute(
                text("SELECT ledger_open_member(:p, :e, CAST(:a AS jsonb))"),
                {"p": programme_id, "e": external_id, "a": attributes_json},
            )
    except IntegrityError:
        raise Conflict(
            "A member with this id is already enrolled.",
            code="member_exists",
            extra={"member_id": external_id},
        ) from None


async def get(conn: AsyncConnection, programme_id: int, external_id: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(f"SELECT {_COLUMNS} FROM members WHERE programme_id = :p AND external_id = :e"),
            {"p": programme_id, "e": external_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def update(
    conn: AsyncConnection,
    programme_id: int,
    external_id: str,
    attributes_json: str | None,
    status: str | None,
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(
                f"""
                UPDATE members SET
                    -- Merge; a top-level null removes that key (nulls nested inside values stay).
                    attributes = CASE WHEN CAST(:a AS jsonb) IS NULL THEN attributes
                                      ELSE (attributes || CAST(:a AS jsonb)) - ARRAY(
                                          SELECT key FROM jsonb_each(CAST(:a AS jsonb)) WHERE value = 'null')
                                      END,
                    status = coalesce(:s, status), updated_at = now()
                WHERE programme_id = :p AND external_id = :e
                RETURNING {_COLUMNS}
                """
            ),
            {"p": programme_id, "e": external_id, "a": attributes_json, "s": status},
        )
    ).first()
    return dict(row._mapping) if row else None


async def page(
    conn: AsyncConnection, programme_id: int, after: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM members WHERE programme_id = :p AND (CAST(:after AS text) IS NULL "
            "OR external_id > :after) ORDER BY external_id LIMIT :n"
        ),
        {"p": programme_id, "after": after, "n": limit},
    )
    return [dict(r._mapping) for r in rows]


# Search: every statement below is served by an index (migration 0020). The id prefix is a
# range on ``external_id COLLATE "C"`` (byte order, which a prefix range needs in any locale),
# and the results come in that order, so the next page is a keyset step on the same index.
_BYTE_ORDER = '(external_id COLLATE "C")'
# The largest code point: every id that starts with the prefix sorts below prefix + this.
_TOP = "\U0010ffff"


def search_statement(
    programme_id: int,
    *,
    id_prefix: str | None = None,
    attribute_docs: list[str] | None = None,
    after: str | None = None,
    limit: int,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of a member search (kept apart so a test can EXPLAIN it).

    ``id_prefix``: members whose id starts with it. ``attribute_docs``: JSON objects the
    attributes must contain (any one of them, e.g. {"age": "30"} or {"age": 30})."""
    clauses = ["programme_id = :p"]
    params: dict[str, Any] = {"p": programme_id, "n": limit}
    if id_prefix is not None:
        clauses.append(f"{_BYTE_ORDER} >= :lo AND {_BYTE_ORDER} < :hi")
        params["lo"], params["hi"] = id_prefix, id_prefix + _TOP
    if attribute_docs:
        ors = []
        for i, doc in enumerate(attribute_docs):
            ors.append(f"attributes @> CAST(:doc{i} AS jsonb)")
            params[f"doc{i}"] = doc
        clauses.append("(" + " OR ".join(ors) + ")")
    if after is not None:
        clauses.append(f"{_BYTE_ORDER} > :after")
        params["after"] = after
    sql = f"SELECT {_COLUMNS} FROM members WHERE {' AND '.join(clauses)} ORDER BY {_BYTE_ORDER} LIMIT :n"
    return sql, params


async def search(
    conn: AsyncConnection,
    programme_id: int,
    *,
    id_prefix: str | None = None,
    attribute_docs: list[str] | None = None,
    after: str | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    sql, params = search_statement(
        programme_id, id_prefix=id_prefix, attribute_docs=attribute_docs, after=after, limit=limit
    )
    return [dict(r._mapping) for r in await conn.execute(text(sql), params)]
