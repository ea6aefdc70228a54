"""SQL of API keys."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def principal_row(conn: AsyncConnection, key_hash: bytes) -> tuple[int, int, str, str, str] | None:
    row = (
        await conn.execute(
            text(
                "SELECT k.id, k.programme_id, p.code, k.role, p.timezone FROM api_keys k JOIN programmes p ON p.id = k.programme_id "
                "WHERE k.key_hash = :h AND k.revoked_at IS NULL"
            ),
            {"h": key_hash},
        )
    ).first()
    return (row[0], row[1], row[2], row[3], row[4]) if row else None


async def programme_timezone(conn: AsyncConnection, programme_id: int) -> str | None:
    tz = await conn.scalar(text("SELECT timezone FROM programmes WHERE id = :p"), {"p": programme_id})
    return None if tz is None else str(tz)


async def insert_key(
    conn: AsyncConnection, programme_id: int, role: str, name: str, key_hash: bytes, prefix: str
) -> int:
    return (
        await conn.execute(
            text(
                "INSERT INTO api_keys (programme_id, role, name, key_hash, prefix) "
                "VALUES (:p, :r, :n, :h, :x) RETURNING id"
            ),
            {"p": programme_id, "r": role, "n": name, "h": key_hash, "x": prefix},
        )
    ).scalar_one()


async def revoke_key(conn: AsyncConnection, programme_id: int, key_id: int) -> bool:
    result = await conn.execute(
        text(
            "UPDATE api_keys SET revoked_at = now() WHERE programme_id = :p AND id = :k AND revoked_at IS NULL"
        ),
        {"p": programme_id, "k": key_id},
    )
    return result.rowcount == 1
