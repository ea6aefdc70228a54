"""SQL of programmes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_COLUMNS = "id, code, name, currency, timezone, clawback_policy, allow_transfers, created_at"


async def by_code(conn: AsyncConnection, code: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(text(f"SELECT {_COLUMNS} FROM programmes WHERE code = :c"), {"c": code})
    ).first()
    return dict(row._mapping) if row else None


async def by_id(conn: AsyncConnection, programme_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(text(f"SELECT {_COLUMNS} FROM programmes WHERE id = :p"), {"p": programme_id})
    ).one()
    return dict(row._mapping)


async def bump_config_version(conn: AsyncConnection, programme_id: int) -> None:
    """Move the programme's ``config_version``, so that every plan cached under the old number
    (rules, ladders, segments, benefits) is made again.

    On a single node the config tables' triggers do this too; on Citus those tables are
    replicated, a replica's trigger would draw a number of its own, and an UPDATE of a
    reference table may not call ``nextval``: the writer calls this in its own transaction,
    and the number is drawn before the UPDATE.
    """
    version = (await conn.execute(text("SELECT nextval('programme_config_version_seq')"))).scalar_one()
    await conn.execute(
        text("UPDATE programmes SET config_version = :v WHERE id = :p"), {"v": version, "p": programme_id}
    )


async def insert(
    conn: AsyncConnection,
    *,
    code: str,
    name: str,
    currency: str,
    timezone: str,
    clawback_policy: str,
    allow_transfers: bool,
) -> int:
    return (
        await conn.execute(
            text(
                "INSERT INTO programmes (code, name, currency, timezone, clawback_policy, allow_transfers) "
                "VALUES (:c, :n, :cur, :tz, :cp, :at) RETURNING id"
            ),
            {
                "c": code,
                "n": name,
                "cur": currency,
                "tz": timezone,
                "cp": clawback_policy,
                "at": allow_transfers,
            },
        )
    ).scalar_one()


async def update(conn: AsyncConnection, programme_id: int, changes: dict[str, Any]) -> None:
    if not changes:
        return
    sets = ", ".join(f"{column} = :{column}" for column in changes)
    await conn.execute(text(f"UPDATE programmes SET {sets} WHERE id = :p"), {"p": programme_id, **changes})
    if "timezone" in changes:
        # Local days move with the timezone. A trigger does this on a single node; on Citus,
        # where programmes is replicated and each replica would draw its own number, only this.
        await bump_config_version(conn, programme_id)
    if "clawback_policy" in changes:
        # A member's floor follows the policy: 0 under 'clamp', none under 'negative'. Members
        # already below zero keep their debt; the floor then only stops further debits.
        await conn.execute(
            text(
                """
                UPDATE account_balances ab SET floor = CASE WHEN :cp = 'clamp' AND ab.available >= 0 THEN 0 END
                FROM accounts a WHERE a.programme_id = ab.programme_id AND a.id = ab.account_id
                  AND a.kind = 'member' AND ab.programme_id = :p
                """
            ),
            {"p": programme_id, "cp": changes["clawback_policy"]},
        )


async def count(conn: AsyncConnection) -> int:
    return (await conn.execute(text("SELECT count(*) FROM programmes"))).scalar_one()
