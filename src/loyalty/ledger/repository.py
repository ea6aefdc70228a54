"""All SQL of the ledger. Writes are single calls of the posting engine (ledger/sql/)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol, TypeAlias

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import distribution
from loyalty.db import PostingConnection as DriverConnection
from loyalty.idempotency import Posted
from loyalty.ledger.errors import ledger_error
from loyalty.observability.metrics import metered_post

DOMAIN_SQLSTATE = "LY000"


def _domain_error(exc: DBAPIError) -> Exception | None:
    if getattr(exc.orig, "sqlstate", None) != DOMAIN_SQLSTATE:
        return None
    cause = exc.orig.__cause__ if exc.orig is not None else None
    return ledger_error(getattr(cause, "message", str(cause)), getattr(cause, "detail", None))


_POSTING_SQL: dict[tuple[str, tuple[str, ...]], Any] = {}


def _posting_statement(function: str, params: tuple[str, ...]) -> Any:
    key = (function, params)
    stmt = _POSTING_SQL.get(key)
    if stmt is None:
        args = ", ".join(f":{p}" for p in params)
        stmt = text(f"SELECT replayed, body::text FROM {function}({args})")
        _POSTING_SQL[key] = stmt
    return stmt


_DRIVER_SQL: dict[tuple[str, int], str] = {}


class Committer(Protocol):
    """What ledger/group_commit.GroupCommitter offers the postings: one call, answered after
    the commit of the batch it went in, and its pool for a write that needs a connection."""

    pool: asyncpg.Pool
    acquire_timeout: float

    async def post(self, function: str, params: dict[str, Any]) -> Posted: ...


# A posting function is called on a plain asyncpg connection (the call is its own transaction),
# through the process's group committer (the HTTP write path: many calls in one), or inside a
# caller's SQLAlchemy transaction (jobs, tests, the demo).
PostingConnection: TypeAlias = DriverConnection | Committer


async def post(conn: PostingConnection, function: str, **params: Any) -> Posted:
    """Calls one posting function; a business failure comes back as a domain error. Counted in
    the ledger operation metrics by kind and outcome."""
    return await metered_post(function, _post(conn, function, params))


async def post_on_driver(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    function: str,
    params: dict[str, Any],
    *,
    citus: bool | None = None,
) -> Posted:
    """One posting function called on an asyncpg connection: in autocommit, its own transaction.

    On Citus (``citus``, else as detected at start-up) the call names its member's key and so
    runs whole on that member's node; one that needs the other nodes (an earn whose budget
    shard runs short) comes back as LY002, having written nothing, and goes again through the
    coordinator."""
    routed = distribution.route(function, params, citus=citus)
    try:
        return await _call_on_driver(conn, function, routed)
    except asyncpg.PostgresError as exc:
        # Never raised on a single node.
        if exc.sqlstate != distribution.NEEDS_COORDINATOR:
            raise
    # Inside a transaction block Citus does not delegate: the coordinator runs the call.
    async with conn.transaction():
        return await _call_on_driver(conn, function, params)


async def _call_on_driver(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, function: str, params: dict[str, Any]
) -> Posted:
    sql = _DRIVER_SQL.get((function, len(params)))
    if sql is None:
        args = ", ".join(f"${i}" for i in range(1, len(params) + 1))
        sql = _DRIVER_SQL[(function, len(params))] = f"SELECT replayed, body::text FROM {function}({args})"
    try:
        record = await conn.fetchrow(sql, *params.values())
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == DOMAIN_SQLSTATE:
            raise ledger_error(exc.message, getattr(exc, "detail", None)) from None
        raise
    return Posted(replayed=record[0], body=record[1].encode())


async def _post(conn: PostingConnection, function: str, params: dict[str, Any]) -> Posted:
    if isinstance(conn, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        return await post_on_driver(conn, function, params)
    if not isinstance(conn, AsyncConnection):
        return await conn.post(function, params)
    stmt = _posting_statement(function, tuple(params))
    try:
        row = (await conn.execute(stmt, params)).one()
    except DBAPIError as exc:
        error = _domain_error(exc)
        if error is not None:
            raise error from None
        raise
    return Posted(replayed=row[0], body=row[1].encode())


@asynccontextmanager
async def dedicated(conn: PostingConnection) -> AsyncIterator[PostingConnection]:
    """A connection of its own, for a write of several statements (a posting and its audit row):
    the group committer lends one from its pool; any other connection is used as it is."""
    if isinstance(conn, AsyncConnection | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        yield conn
        return
    async with conn.pool.acquire(timeout=conn.acquire_timeout) as own:
        yield own


async def claim_key(conn: AsyncConnection, programme_id: int, key: str | None, fingerprint: bytes) -> Any:
    if key is None:
        return None
    try:
        return (
            await conn.execute(
                text("SELECT ledger_claim_key(:p, :k, :f)::text"),
                {"p": programme_id, "k": key, "f": fingerprint},
            )
        ).scalar_one()
    except DBAPIError as exc:
        error = _domain_error(exc)
        if error is not None:
            raise error from None
        raise


async def store_key(
    conn: AsyncConnection, programme_id: int, key: str | None, status: int, body: bytes
) -> None:
    if key is not None:
        await conn.execute(
            text("SELECT ledger_store_key(:p, :k, :s, CAST(:b AS jsonb))"),
            {"p": programme_id, "k": key, "s": status, "b": body.decode()},
        )


async def open_programme(conn: AsyncConnection, programme_id: int) -> None:
    await conn.execute(text("SELECT ledger_open_programme(:p)"), {"p": programme_id})


async def member_ids(conn: AsyncConnection, programme_id: int, external_id: str) -> tuple[int, int] | None:
    row = (
        await conn.execute(
            text("SELECT id, account_id FROM members WHERE programme_id = :p AND external_id = :e"),
            {"p": programme_id, "e": external_id},
        )
    ).first()
    return (row[0], row[1]) if row else None


async def balance(conn: AsyncConnection, programme_id: int, member_id: int, soon: datetime) -> dict[str, int]:
    # By the member's primary key: members has no index on account_id, and a programme of a
    # million members would be scanned to find one. (No join of the two: on Citus a member's
    # balance row is joined on its shard column, which a single node does not have.)
    row = (
        await conn.execute(
            text(
                """
                SELECT ab.available, ab.pending, ab.held,
                       (SELECT coalesce(sum(l.remaining), 0) FROM lots l
                        WHERE l.programme_id = :p AND l.member_id = :m
                          AND l.remaining > 0 AND l.expires_at <= :soon) AS expiring_soon
                FROM account_balances ab
                WHERE ab.programme_id = :p AND ab.shard = 0
                  AND ab.account_id = (SELECT m.account_id FROM members m WHERE m.programme_id = :p AND m.id = :m)
                """
            ),
            {"p": programme_id, "m": member_id, "soon": soon},
        )
    ).one()
    return {"available": row[0], "pending": row[1], "held": row[2], "expiring_soon": int(row[3])}


async def expiring(
    conn: AsyncConnection, programme_id: int, member_id: int, until: datetime
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            """
            SELECT expires_at, sum(remaining) AS points FROM lots
            WHERE programme_id = :p AND member_id = :m AND remaining > 0 AND expires_at <= :until
            GROUP BY expires_at ORDER BY expires_at
            """
        ),
        {"p": programme_id, "m": member_id, "until": until},
    )
    return [{"expires_at": r[0], "points": int(r[1])} for r in rows]


async def open_lots(
    conn: AsyncConnection, programme_id: int, member_id: int, limit: int
) -> list[dict[str, Any]]:
    """The member's lots with points left, soonest expiry first (the order points are spent);
    the member's rows of the lots primary key."""
    rows = await conn.execute(
        text(
            """
            SELECT l.id, l.txn_id, b.code AS budget, l.amount, l.remaining, l.vested, l.vests_at,
                   l.expires_at, l.created_at
            FROM lots l LEFT JOIN budgets b ON b.programme_id = l.programme_id AND b.id = l.budget_id
            WHERE l.programme_id = :p AND l.member_id = :m AND l.remaining > 0
            ORDER BY l.vested DESC, l.expires_at NULLS LAST, l.id LIMIT :n
            """
        ),
        {"p": programme_id, "m": member_id, "n": limit},
    )
    return [dict(r._mapping) for r in rows]


async def open_holds(conn: AsyncConnection, programme_id: int, member_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            """
            SELECT id AS hold_id, amount, reference, expires_at, created_at FROM holds
            WHERE programme_id = :p AND member_id = :m AND status = 'open'
            ORDER BY id
            """
        ),
        {"p": programme_id, "m": member_id},
    )
    return [dict(r._mapping) for r in rows]


_HISTORY_COLUMNS = """
    t.id, t.kind,
    CASE WHEN t.member_id = :m THEN t.amount ELSE -t.amount END AS amount,
    t.reference, t.reason, b.code AS budget, t.hold_id, t.reverses_id, t.cost_micros,
    t.metadata, t.created_at, m.external_id AS member_id, cp.external_id AS counterparty_id
"""


async def history(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    *,
    before_id: int | None,
    limit: int,
    kinds: Sequence[str] | None,
    reference: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[dict[str, Any]]:
    clauses = ["t.programme_id = :p", "(t.member_id = :m OR t.counterparty_id = :m)"]
    params: dict[str, Any] = {"p": programme_id, "m": member_id, "limit": limit}
    if before_id is not None:
        clauses.append("t.id < :before")
        params["before"] = before_id
    if kinds:
        clauses.append("t.kind = ANY(:kinds)")
        params["kinds"] = list(kinds)
    if reference is not None:
        clauses.append("t.reference = :ref")
        params["ref"] = reference
    if since is not None:
        clauses.append("t.created_at >= :since")
        params["since"] = since
    if until is not None:
        clauses.append("t.created_at < :until")
        params["until"] = until
    if distribution.Layout.citus:
        return await _history_citus(conn, clauses, params)
    sql = f"""
        SELECT {_HISTORY_COLUMNS}
        FROM transactions t
        LEFT JOIN budgets b ON b.programme_id = t.programme_id AND b.id = t.budget_id
        LEFT JOIN members m ON m.programme_id = t.programme_id AND m.id = t.member_id
        LEFT JOIN members cp ON cp.programme_id = t.programme_id AND cp.id = t.counterparty_id
        WHERE {" AND ".join(clauses)}
        ORDER BY t.id DESC LIMIT :limit
    """
    return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def _history_citus(
    conn: AsyncConnection, clauses: list[str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The history on Citus. A transfer received sits on its sender's shard, so this read
    visits every shard (a read, not one of the hot writes); the join with the member's row is
    on the distribution column, and the few counterparties are named by a second read (a join
    with them would join two shards)."""
    columns = _HISTORY_COLUMNS.replace("cp.external_id AS counterparty_id", "t.counterparty_id")
    sql = f"""
        SELECT {columns}
        FROM transactions t
        LEFT JOIN budgets b ON b.programme_id = t.programme_id AND b.id = t.budget_id
        LEFT JOIN members m ON m.programme_id = t.programme_id AND m.id = t.member_id
        WHERE {" AND ".join(clauses)}
        ORDER BY t.id DESC LIMIT :limit
    """
    rows = [dict(r._mapping) for r in await conn.execute(text(sql), params)]
    ids = sorted({row["counterparty_id"] for row in rows if row["counterparty_id"] is not None})
    names: dict[int, str] = {}
    if ids:
        found = await conn.execute(
            text("SELECT id, external_id FROM members WHERE programme_id = :p AND id = ANY(:ids)"),
            {"p": params["p"], "ids": ids},
        )
        names = {row.id: row.external_id for row in found}
    for row in rows:
        if row["counterparty_id"] is not None:
            row["counterparty_id"] = names.get(row["counterparty_id"])
    return rows


async def transaction(conn: AsyncConnection, programme_id: int, txn_id: int) -> str | None:
    row = (
        await conn.execute(text("SELECT ledger_txn_json(:p, :t)::text"), {"p": programme_id, "t": txn_id})
    ).scalar_one_or_none()
    return row


async def transactions_by_reference(conn: AsyncConnection, programme_id: int, reference: str) -> list[str]:
    if distribution.Layout.citus:
        # A function that reads distributed tables cannot run inside a query over their
        # shards: the ids first, then each transaction on its own shard.
        ids = await conn.execute(
            text(
                "SELECT id FROM transactions WHERE programme_id = :p AND reference = :r ORDER BY id LIMIT 1000"
            ),
            {"p": programme_id, "r": reference},
        )
        found = [await transaction(conn, programme_id, txn_id) for (txn_id,) in ids.all()]
        return [body for body in found if body is not None]
    rows = await conn.execute(
        text(
            "SELECT ledger_txn_json(programme_id, id)::text FROM transactions "
            "WHERE programme_id = :p AND reference = :r ORDER BY id LIMIT 1000"
        ),
        {"p": programme_id, "r": reference},
    )
    return [r[0] for r in rows]


_ENTRIES = """
    SELECT e.seq, a.kind AS account_kind, coalesce(m.external_id, b.code) AS account,
           e.shard, CASE e.bucket WHEN 0 THEN 'available' WHEN 1 THEN 'pending' ELSE 'held' END AS bucket,
           e.amount
    FROM entries e JOIN accounts a ON a.programme_id = e.programme_id AND a.id = e.account_id
    LEFT JOIN members m ON m.programme_id = e.programme_id AND m.account_id = e.account_id AND a.kind = 'member'
    {citus_join}
    LEFT JOIN budgets b ON b.programme_id = e.programme_id AND b.account_id = e.account_id AND a.kind = 'budget'
    WHERE e.programme_id = :p AND e.txn_id = :t ORDER BY e.seq
"""
# On Citus a join of distributed tables must include the distribution column: a transaction's
# entries sit with its member (their owner), and the member's row beside them.
_ENTRIES_PLAIN = _ENTRIES.format(citus_join="")
_ENTRIES_CITUS = _ENTRIES.format(citus_join="AND m.id = e.member_id")


async def entries(conn: AsyncConnection, programme_id: int, txn_id: int) -> list[dict[str, Any]]:
    sql = _ENTRIES_CITUS if distribution.Layout.citus else _ENTRIES_PLAIN
    rows = await conn.execute(text(sql), {"p": programme_id, "t": txn_id})
    return [dict(r._mapping) for r in rows]


async def hold(conn: AsyncConnection, programme_id: int, hold_id: int) -> str | None:
    return (
        await conn.execute(text("SELECT ledger_hold_json(:p, :h)::text"), {"p": programme_id, "h": hold_id})
    ).scalar_one_or_none()


async def budget(
    conn: AsyncConnection | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    programme_id: int,
    code: str,
) -> str | None:
    if not isinstance(conn, AsyncConnection):
        return await conn.fetchval(
            "SELECT ledger_budget_json(programme_id, id)::text FROM budgets WHERE programme_id = $1 AND code = $2",
            programme_id,
            code,
        )
    return (
        await conn.execute(
            text(
                "SELECT ledger_budget_json(programme_id, id)::text FROM budgets WHERE programme_id = :p AND code = :c"
            ),
            {"p": programme_id, "c": code},
        )
    ).scalar_one_or_none()


async def budgets(conn: AsyncConnection, programme_id: int) -> list[str]:
    rows = await conn.execute(
        text(
            "SELECT ledger_budget_json(programme_id, id)::text FROM budgets WHERE programme_id = :p ORDER BY code"
        ),
        {"p": programme_id},
    )
    return [r[0] for r in rows]


async def liability(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    """Outstanding points and their money value, redemptions and breakage, per budget."""
    rows = await conn.execute(
        text(
            """
            WITH held AS (
                SELECT mv.lot_id, mv.member_id, sum(mv.amount) AS points
                FROM lot_movements mv JOIN holds h ON h.programme_id = mv.programme_id AND h.id = mv.hold_id
                WHERE mv.programme_id = :p AND h.status = 'open'
                GROUP BY mv.lot_id, mv.member_id
            ), outstanding AS (
                SELECT l.budget_id,
                       sum(l.remaining) FILTER (WHERE l.vested)::bigint AS available,
                       sum(l.remaining) FILTER (WHERE NOT l.vested)::bigint AS pending,
                       sum(coalesce(h.points, 0))::bigint AS held,
                       sum((l.remaining + coalesce(h.points, 0)) * l.unit_cost_micros)::bigint AS value_micros
                FROM lots l LEFT JOIN held h ON h.member_id = l.member_id AND h.lot_id = l.id
                WHERE l.programme_id = :p
                GROUP BY l.budget_id
            ), flows AS (
                SELECT l.budget_id, t.kind, sum(mv.amount)::bigint AS points, sum(mv.amount * l.unit_cost_micros)::bigint AS micros
                FROM lot_movements mv
                JOIN transactions t ON t.programme_id = mv.programme_id AND t.id = mv.txn_id
                JOIN lots l ON l.programme_id = mv.programme_id AND l.member_id = mv.member_id AND l.id = mv.lot_id
                WHERE mv.programme_id = :p AND t.kind = 'expire'
                GROUP BY l.budget_id, t.kind
            )
            SELECT b.code AS budget, b.unit_cost_micros,
                   coalesce(o.available, 0) AS available, coalesce(o.pending, 0) AS pending,
                   coalesce(o.held, 0) AS held, coalesce(o.value_micros, 0) AS liability_micros,
                   coalesce((SELECT sum(points) FROM flows f WHERE f.budget_id IS NOT DISTINCT FROM o.budget_id
                             AND f.kind = 'expire'), 0)::bigint AS breakage_points,
                   coalesce((SELECT sum(micros) FROM flows f WHERE f.budget_id IS NOT DISTINCT FROM o.budget_id
                             AND f.kind = 'expire'), 0)::bigint AS breakage_micros
            FROM outstanding o LEFT JOIN budgets b ON b.programme_id = :p AND b.id = o.budget_id
            ORDER BY b.code NULLS LAST
            """
        ),
        {"p": programme_id},
    )
    return [dict(r._mapping) for r in rows]


async def run_job(conn: AsyncConnection, function: str, limit: int) -> int:
    """Runs one of the engine's job functions; ``limit`` 0 means the function takes none."""
    if limit == 0:
        return int((await conn.execute(text(f"SELECT {function}()"))).scalar_one())
    return int((await conn.execute(text(f"SELECT {function}(:n)"), {"n": limit})).scalar_one())


# What the member-by-member form of a job (on Citus) finds due: (programme, member[, hold]).
# Reads without locks, across shards; each item is re-checked under its lock when it is done.
_DUE = {
    "vest": "SELECT DISTINCT programme_id, member_id FROM lots WHERE NOT vested AND vests_at <= now() LIMIT :n",
    "expire": (
        "SELECT DISTINCT programme_id, member_id FROM lots "
        "WHERE remaining > 0 AND expires_at <= now() LIMIT :n"
    ),
    "holds": (
        "SELECT programme_id, member_id, id FROM holds WHERE status = 'open' AND expires_at <= now() "
        "ORDER BY expires_at LIMIT :n"
    ),
}


async def due_for_job(conn: AsyncConnection, job: str, limit: int) -> list[tuple[int, ...]]:
    return [tuple(row) for row in await conn.execute(text(_DUE[job]), {"n": limit})]


async def run_member_job(conn: AsyncConnection, job: str, item: tuple[int, ...]) -> int:
    """One member's share of a job, in the caller's transaction (delegated to its node on Citus)."""
    if job == "holds":
        programme_id, member_id, hold_id = item
        query = text("SELECT ledger_expire_hold(:p, :h, :m)")
        return int(
            (await conn.execute(query, {"p": programme_id, "h": hold_id, "m": member_id})).scalar_one()
        )
    programme_id, member_id = item
    query = text("SELECT ledger_member_job(:j, :p, :m)")
    return int((await conn.execute(query, {"j": job, "p": programme_id, "m": member_id})).scalar_one())


async def purge_idempotency_keys(
    conn: AsyncConnection, older_than_days: int, limit: int, *, citus: bool = False
) -> int:
    if citus:
        # Citus cannot plan a DELETE by ctid over several shards; the key names the row as well.
        query = """
            DELETE FROM idempotency_keys WHERE (programme_id, key, member_id) IN (
                SELECT programme_id, key, member_id FROM idempotency_keys
                WHERE created_at < now() - make_interval(days => :days) LIMIT :n)
            """
    else:
        query = """
            DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM idempotency_keys
                WHERE created_at < now() - make_interval(days => :days) LIMIT :n))
            """
    result = await conn.execute(text(query), {"days": older_than_days, "n": limit})
    return result.rowcount
