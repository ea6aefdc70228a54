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
