"""SQL of API keys."""

from __future__ import annotations

from typing import Any

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


# Every API process LISTENs here and empties its key cache when a key is revoked.
REVOCATION_CHANNEL = "loyalty_api_keys"
_KEY_COLUMNS = (
    "k.id, p.code AS programme, k.prefix, k.name, k.role, k.created_at, k.revoked_at "
    "FROM api_keys k JOIN programmes p ON p.id = k.programme_id"
)


async def list_keys(conn: AsyncConnection, programme_id: int | None = None) -> list[dict[str, Any]]:
    where = "" if programme_id is None else " WHERE k.programme_id = :p"
    rows = await conn.execute(text(f"SELECT {_KEY_COLUMNS}{where} ORDER BY k.id"), {"p": programme_id})
    return [dict(r._mapping) for r in rows]


async def find_keys(
    conn: AsyncConnection,
    *,
    key_id: int | None = None,
    prefix: str | None = None,
    programme_id: int | None = None,
) -> list[dict[str, Any]]:
    """Keys with this id or this public prefix (a prefix may, rarely, match several)."""
    rows = await conn.execute(
        text(
            f"SELECT {_KEY_COLUMNS} WHERE (k.id = :k OR k.prefix = :x) "
            "AND (CAST(:p AS bigint) IS NULL OR k.programme_id = :p) ORDER BY k.id"
        ),
        {"k": key_id, "x": prefix, "p": programme_id},
    )
    return [dict(r._mapping) for r in rows]


async def key_programme(conn: AsyncConnection, key_id: int) -> int:
    return int(await conn.scalar(text("SELECT programme_id FROM api_keys WHERE id = :k"), {"k": key_id}))


async def revoke_key(conn: AsyncConnection, key_id: int) -> None:
    """Revokes the key (a no-op if it already is) and tells every API process, at commit."""
    await conn.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE id = :k AND revoked_at IS NULL"), {"k": key_id}
    )
    await conn.execute(text("SELECT pg_notify(:c, :k)"), {"c": REVOCATION_CHANNEL, "k": str(key_id)})
