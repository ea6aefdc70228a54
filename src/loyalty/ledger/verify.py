"""Reconciliation of the ledger: the balances, lots, holds and budgets agree with the entry trail.

Hot tables carry no foreign keys (see models.py), so this is where their integrity is checked.
Each check is one set-based query (a few scans and hash joins, whatever the number of rows);
the module is the verify repository, so its SQL lives here. ``loyalty ledger verify`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.distribution import CITUS_PRESENT

# At most this many violations are reported per check: a systematic fault would otherwise
# list millions of rows.
MAX_PER_CHECK = 1000


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    programme_id: int
    subject: str
    detail: dict[str, Any] = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        details = ", ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"[{self.check}] programme {self.programme_id} {self.subject}: {details}"


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    description: str
    # Selects (programme_id, subject, detail jsonb) for each violation; {scope} filters a
    # table aliased by the given letter to one programme (or none). On Citus, {citus_b_m} joins
    # a member's balance row on its shard's column too (docs/scaling.md).
    sql: str


_CHECKS: tuple[_Check, ...] = (
    _Check(
        "transaction_balanced",
        "every transaction's entries sum to zero",
        """
        SELECT e.programme_id, 'transaction ' || e.txn_id,
               jsonb_build_object('sum', sum(e.amount), 'entries', count(*))
        FROM entries e WHERE {scope_e}
        GROUP BY e.programme_id, e.txn_id HAVING sum(e.amount) <> 0
        """,
    ),
    _Check(
        "balance_matches_entries",
        "every balance row equals the sum of its entries, per bucket",
        """
        WITH sums AS (
            SELECT e.programme_id, e.account_id, e.shard,
                   coalesce(sum(e.amount) FILTER (WHERE e.bucket = 0), 0) AS available,
                   coalesce(sum(e.amount) FILTER (WHERE e.bucket = 1), 0) AS pending,
                   coalesce(sum(e.amount) FILTER (WHERE e.bucket = 2), 0) AS held
            FROM entries e WHERE {scope_e}
            GROUP BY e.programme_id, e.account_id, e.shard
        ), balances AS (
            SELECT * FROM account_balances b WHERE {scope_b}
        )
        SELECT coalesce(b.programme_id, s.programme_id),
               'account ' || coalesce(b.account_id, s.account_id) || ' shard ' || coalesce(b.shard, s.shard),
               jsonb_build_object(
                   'row', CASE WHEN b.account_id IS NULL THEN NULL
                          ELSE jsonb_build_object('available', b.available, 'pending', b.pending, 'held', b.held) END,
                   'entries', jsonb_build_object('available', coalesce(s.available, 0),
                                                 'pending', coalesce(s.pending, 0), 'held', coalesce(s.held, 0)),
                   'reason', CASE WHEN b.account_id IS NULL THEN 'entries point at no balance row'
                             ELSE 'balance differs from its entries' END)
        FROM balances b
        FULL JOIN sums s ON s.programme_id = b.programme_id AND s.account_id = b.account_id AND s.shard = b.shard
        WHERE b.account_id IS NULL
           OR b.available <> coalesce(s.available, 0)
           OR b.pending <> coalesce(s.pending, 0)
           OR b.held <> coalesce(s.held, 0)
        """,
    ),
    _Check(
        "lots_match_balance",
        "a member's vested lots hold max(available, 0), unvested lots pending, open holds held",
        """
        WITH lot_sums AS (
            SELECT l.programme_id, l.member_id,
                   coalesce(sum(l.remaining) FILTER (WHERE l.vested), 0) AS vested,
                   coalesce(sum(l.remaining) FILTER (WHERE NOT l.vested), 0) AS unvested
            FROM lots l WHERE {scope_l} AND l.remaining <> 0
            GROUP BY l.programme_id, l.member_id
        ), open_held AS (
            SELECT h.programme_id, h.member_id, sum(mv.amount) AS held
            FROM holds h
            JOIN lot_movements mv
              ON mv.programme_id = h.programme_id AND mv.member_id = h.member_id AND mv.hold_id = h.id
            WHERE {scope_h} AND h.status = 'open'
            GROUP BY h.programme_id, h.member_id
        )
        SELECT m.programme_id, 'member ' || m.external_id,
               jsonb_build_object(
                   'available', b.available, 'pending', b.pending, 'held', b.held,
                   'vested_lots', coalesce(ls.vested, 0), 'unvested_lots', coalesce(ls.unvested, 0),
                   'open_hold_movements', coalesce(oh.held, 0),
                   'reason', CASE WHEN b.account_id IS NULL THEN 'member has no balance row' END)
        FROM members m
        LEFT JOIN account_balances b
          ON b.programme_id = m.programme_id AND b.account_id = m.account_id AND b.shard = 0 {citus_b_m}
        LEFT JOIN lot_sums ls ON ls.programme_id = m.programme_id AND ls.member_id = m.id
        LEFT JOIN open_held oh ON oh.programme_id = m.programme_id AND oh.member_id = m.id
        WHERE {scope_m} AND (
            b.account_id IS NULL
            OR coalesce(ls.vested, 0) <> greatest(b.available, 0)
            OR coalesce(ls.unvested, 0) <> b.pending
            OR coalesce(oh.held, 0) <> b.held)
        """,
    ),
    _Check(
        "open_hold_movements",
        "each open hold's net lot movements equal its amount",
        """
        SELECT h.programme_id, 'hold ' || h.id,
               jsonb_build_object('amount', h.amount, 'movements', coalesce(sum(mv.amount), 0))
        FROM holds h
        LEFT JOIN lot_movements mv
          ON mv.programme_id = h.programme_id AND mv.member_id = h.member_id AND mv.hold_id = h.id
        WHERE {scope_h} AND h.status = 'open'
        GROUP BY h.programme_id, h.id, h.amount
        HAVING coalesce(sum(mv.amount), 0) <> h.amount
        """,
    ),
    _Check(
        "balance_floor",
        "no balance row below its floor; pending and held never negative",
        """
        SELECT b.programme_id, 'account ' || b.account_id || ' shard ' || b.shard,
               jsonb_build_object('available', b.available, 'pending', b.pending, 'held', b.held,
                                  'floor', b.floor)
        FROM account_balances b
        WHERE {scope_b} AND (b.available < b.floor OR b.pending < 0 OR b.held < 0)
        """,
    ),
    _Check(
        "budget_within_cap",
        "a budget's shards are never negative and it has issued between 0 and its cap",
        """
        WITH shards AS (
            SELECT b.programme_id, b.id, b.code, b.cap, sum(ab.available) AS remaining,
                   min(ab.available) AS lowest_shard, count(ab.shard) AS shard_rows
            FROM budgets b
            LEFT JOIN account_balances ab ON ab.programme_id = b.programme_id AND ab.account_id = b.account_id
            WHERE {scope_b}
            GROUP BY b.programme_id, b.id, b.code, b.cap
        )
        SELECT programme_id, 'budget ' || code,
               jsonb_build_object('cap', cap, 'remaining', remaining, 'issued', cap - remaining,
                                  'lowest_shard', lowest_shard, 'shard_rows', shard_rows)
        FROM shards
        WHERE shard_rows = 0 OR lowest_shard < 0 OR remaining < 0 OR remaining > cap
        """,
    ),
    _Check(
        "budget_cap_funded",
        "a budget's cap equals the net of its funding transactions",
        """
        WITH funded AS (
            SELECT e.programme_id, e.account_id, sum(e.amount) AS net
            FROM entries e
            JOIN transactions t ON t.programme_id = e.programme_id AND t.id = e.txn_id
            WHERE {scope_e}
              AND t.kind IN ('budget_allocation', 'budget_top_up', 'budget_move', 'budget_close')
            GROUP BY e.programme_id, e.account_id
        )
        SELECT b.programme_id, 'budget ' || b.code,
               jsonb_build_object('cap', b.cap, 'funded', coalesce(f.net, 0))
        FROM budgets b
        LEFT JOIN funded f ON f.programme_id = b.programme_id AND f.account_id = b.account_id
        WHERE {scope_b} AND b.cap <> coalesce(f.net, 0)
        """,
    ),
    _Check(
        "member_cap",
        "no member has received more of a budget than its per-member cap",
        """
        SELECT u.programme_id, 'budget ' || b.code || ' member ' || coalesce(m.external_id, u.member_id::text),
               jsonb_build_object('issued', u.issued, 'per_member_cap', b.per_member_cap)
        FROM budget_member_usage u
        JOIN budgets b ON b.programme_id = u.programme_id AND b.id = u.budget_id
        LEFT JOIN members m ON m.programme_id = u.programme_id AND m.id = u.member_id
        WHERE {scope_u} AND (u.issued < 0 OR u.issued > b.per_member_cap)
        """,
    ),
    _Check(
        "funding_matches_caps",
        "the funding account holds minus the sum of the budgets' caps",
        """
        WITH funding AS (
            SELECT a.programme_id, sum(ab.available) AS balance
            FROM accounts a
            JOIN account_balances ab ON ab.programme_id = a.programme_id AND ab.account_id = a.id
            WHERE {scope_a} AND a.kind = 'funding'
            GROUP BY a.programme_id
        ), caps AS (
            SELECT b.programme_id, sum(b.cap) AS caps FROM budgets b WHERE {scope_b} GROUP BY b.programme_id
        )
        SELECT coalesce(f.programme_id, c.programme_id), 'funding account',
               jsonb_build_object('balance', f.balance, 'sum_of_caps', coalesce(c.caps, 0))
        FROM funding f FULL JOIN caps c ON c.programme_id = f.programme_id
        WHERE f.programme_id IS NULL OR f.balance <> -coalesce(c.caps, 0)
        """,
    ),
)

CHECKS: tuple[str, ...] = tuple(c.name for c in _CHECKS)

_SCOPE_ALIASES = ("a", "b", "e", "h", "l", "m", "u")


def _render(sql: str, programme_id: int | None, citus: bool = False) -> str:
    scopes = {
        f"scope_{alias}": ("true" if programme_id is None else f"{alias}.programme_id = :programme_id")
        for alias in _SCOPE_ALIASES
    }
    scopes["citus_b_m"] = "AND b.member_id = m.id" if citus else ""
    return sql.format(**scopes) + f"\nLIMIT {MAX_PER_CHECK}"


async def verify(conn: AsyncConnection, programme_id: int | None = None) -> list[Violation]:
    """Every violation of the ledger's invariants, in one programme or in all of them.

    Runs in the caller's transaction; under concurrent writes, give it a REPEATABLE READ one so
    that every check sees the same snapshot (run_cli does).
    """
    params = {} if programme_id is None else {"programme_id": programme_id}
    citus = bool(await conn.scalar(text(CITUS_PRESENT)))
    violations: list[Violation] = []
    for check in _CHECKS:
        rows = await conn.execute(text(_render(check.sql, programme_id, citus)), params)
        violations.extend(
            Violation(check=check.name, programme_id=int(r[0]), subject=str(r[1]), detail=dict(r[2]))
            for r in rows
        )
    return violations


async def row_counts(conn: AsyncConnection, programme_id: int | None = None) -> dict[str, int]:
    """Rows the checks read, per table: cheap next to the checks themselves."""
    tables = ("transactions", "entries", "account_balances", "lots", "lot_movements", "holds", "budgets")
    where = "" if programme_id is None else " WHERE programme_id = :programme_id"
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}{where}) AS {t}" for t in tables)
    params = {} if programme_id is None else {"programme_id": programme_id}
    row = (await conn.execute(text(sql), params)).one()
    return {t: int(row._mapping[t]) for t in tables}


async def run_cli(settings: Any, programme_code: str | None) -> int:
    """`loyalty ledger verify [--programme P]`: prints a summary; 0 when clean, 1 otherwise.

    A coroutine: the CLI runs the domain's hooks whether they are plain or async functions.
    """
    from loyalty.db import create_engine

    engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                programme_id: int | None = None
                if programme_code is not None:
                    programme_id = await conn.scalar(
                        text("SELECT id FROM programmes WHERE code = :code"), {"code": programme_code}
                    )
                    if programme_id is None:
                        print(f"no programme {programme_code!r}")
                        return 1
                counts = await row_counts(conn, programme_id)
                violations = await verify(conn, programme_id)
    finally:
        await engine.dispose()

    scope = f"programme {programme_code}" if programme_code else "all programmes"
    print(f"ledger verify: {scope}")
    print("rows examined: " + ", ".join(f"{table} {n}" for table, n in counts.items()))
    by_check: dict[str, int] = {}
    for v in violations:
        by_check[v.check] = by_check.get(v.check, 0) + 1
    for check in _CHECKS:
        found = by_check.get(check.name, 0)
        status = "ok" if not found else f"{found} violation{'s' if found != 1 else ''}"
        print(f"  {check.name:<26} {status:<16} {check.description}")
    for v in violations:
        print(f"  {v}")
    print("clean" if not violations else f"{len(violations)} violation(s)")
    return 0 if not violations else 1
