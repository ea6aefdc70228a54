"""`python -m bench.reports` (`make bench-reports`): the dashboard's reads on a large programme,
and what keeping the reports costs an earn.

1. Earn cost, A/B/C in alternating rounds on one database: earns from 8 connections with no
   report index (as before this module), with the BRIN index on transactions.created_at that
   the rollup job reads (this design), and with a statement trigger that keeps per-day
   counters on every insert into transactions (the alternative that was not chosen).
2. A large programme built with generate_series: members, transactions and three years of
   rollup rows (beside those of many other programmes), then p50/p95 of each dashboard read
   through the service functions, with the ratio to a primary-key select in the same run,
   and the plan of the daily flows read.
3. The rollup job's throughput on freshly posted earns.

python -m bench.reports                          # 1M members, 2M transactions (~2 min here)
python -m bench.reports --transactions 10000000  # the issue's size (several minutes here)
python -m bench.reports --quick                  # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench import stack
from loyalty.db import create_engine

DATABASE = "loyalty_bench_reports"
RESULTS = Path(__file__).resolve().parent / "results" / "reports.json"
EARN_CONNECTIONS = 8
DAYS = 3 * 365 + 1
BUDGETS = 100

BRIN = (
    "CREATE INDEX IF NOT EXISTS ix_transactions_created_brin ON transactions USING brin (created_at) "
    "WITH (pages_per_range = 32, autosummarize = on)"
)
# The alternative: counters kept by a trigger in the posting's own transaction. Sharded by
# backend so concurrent earns rarely wait on one row; even so each earn writes one more row
# and holds its lock until commit.
TRIGGER_COUNTERS = """
CREATE TABLE IF NOT EXISTS bench_flow_counters (
    programme_id bigint, day date, kind text, shard int, points bigint, money bigint, n bigint,
    PRIMARY KEY (programme_id, day, kind, shard));
CREATE OR REPLACE FUNCTION bench_count_flows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_flow_counters AS c
    SELECT n.programme_id, (n.created_at AT TIME ZONE p.timezone)::date, n.kind, pg_backend_pid() % 16,
           sum(n.amount), sum(n.cost_micros), count(*)
    FROM new_rows n JOIN programmes p ON p.id = n.programme_id GROUP BY 1, 2, 3
    ON CONFLICT (programme_id, day, kind, shard) DO UPDATE
        SET points = c.points + EXCLUDED.points, money = c.money + EXCLUDED.money, n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_count_flows AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_count_flows();
"""
DROP_TRIGGER = "DROP TRIGGER IF EXISTS bench_count_flows ON transactions"
EARN = "SELECT ledger_earn($1, NULL, NULL, $2, $3, 10, false, NULL, NULL, NULL, NULL, NULL, 'bench')"


def _say(message: str) -> None:
    print(message, flush=True)


async def new_programme(conn: asyncpg.Connection, code: str, members: int, budgets: int) -> int:
    programme_id = int(
        await conn.fetchval(
            "INSERT INTO programmes (code, name, currency, timezone) VALUES ($1, $1, 'CNY', 'Asia/Shanghai') "
            "RETURNING id",
            code,
        )
    )
    await conn.execute("SELECT ledger_open_programme($1)", programme_id)
    await conn.execute(
        "SELECT ledger_create_budget($1, NULL, NULL, 'b' || i, 'Budget ' || i, 1000000000000, 10000, NULL, NULL, "
        "NULL, '{}', 16, 'bench') FROM generate_series(1, $2::int) i",
        programme_id,
        budgets,
    )
    await conn.execute(
        "SELECT ledger_open_member($1, 'm' || i, '{}') FROM generate_series(1, $2::int) i",
        programme_id,
        members,
    )
    return programme_id


# 1. Earn cost ------------------------------------------------------------------------------


async def _earns_for(url: str, programme_id: int, seconds: float) -> int:
    async def one(seed: int) -> int:
        conn = await asyncpg.connect(url)
        rng = random.Random(seed)
        n = 0
        try:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                member = rng.randrange(1, 10_001)
                await conn.execute(EARN, programme_id, f"m{member}", f"b{1 + member % 10}")
                n += 1
        finally:
            await conn.close()
        return n

    return sum(await asyncio.gather(*(one(i) for i in range(EARN_CONNECTIONS))))


async def earn_cost(url: str, seconds: float, rounds: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        programme_id = await new_programme(conn, "earncost", 10_000, 10)
        await conn.execute("VACUUM ANALYZE")
        variants: dict[str, Callable[[], Awaitable[None]]] = {}

        async def plain() -> None:
            await conn.execute(DROP_TRIGGER)
            await conn.execute("DROP INDEX IF EXISTS ix_transactions_created_brin")

        async def brin() -> None:
            await conn.execute(DROP_TRIGGER)
            await conn.execute(BRIN)

        async def trigger() -> None:
            await conn.execute("DROP INDEX IF EXISTS ix_transactions_created_brin")
            await conn.execute(TRIGGER_COUNTERS)

        variants = {"no report index": plain, "brin (this design)": brin, "trigger counters": trigger}
        rates: dict[str, list[float]] = {name: [] for name in variants}
        await _earns_for(url, programme_id, 1.0)  # warm-up
        for _ in range(rounds):
            for name, prepare in variants.items():
                await prepare()
                n = await _earns_for(url, programme_id, seconds)
                rates[name].append(n / seconds)
        await conn.execute(DROP_TRIGGER)
        await conn.execute(BRIN)
    finally:
        await conn.close()
    base = statistics.median(rates["no report index"])
    out = {}
    for name, values in rates.items():
        median = statistics.median(values)
        out[name] = {
            "earns_per_s": round(median, 1),
            "vs_no_index": round(median / base, 3),
            "rounds": values,
        }
        _say(f"  {name:22s} {median:8.0f} earns/s  ({median / base:.1%} of no index)")
    return out


# 2. A large programme --------------------------------------------------------------------------


async def build_large(url: str, members: int, transactions: int, others: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        programme_id = await new_programme(conn, "large", 0, BUDGETS)
        await conn.execute(
            "INSERT INTO members (programme_id, external_id, account_id, enrolled_at) "
            "SELECT $1, 'x' || i, 0, now() - (i % $3) * interval '1 day' FROM generate_series(1, $2::int) i",
            programme_id,
            members,
            DAYS,
        )
        _say(f"  {members:,} members in {time.perf_counter() - t0:.0f} s")
        t1 = time.perf_counter()
        step = max(1, DAYS * 86_400 // max(transactions, 1))
        await conn.execute(
            """
            INSERT INTO transactions (programme_id, kind, member_id, budget_id, amount, cost_micros, created_at)
            SELECT $1, (ARRAY['earn','earn','earn','spend','expire','clawback','adjust','hold'])[1 + i % 8],
                   1 + i % $3, NULL, CASE WHEN i % 8 < 3 THEN 10 ELSE -5 END, 50000,
                   now() - make_interval(secs => ($2::bigint - i) * $4::bigint)
            FROM generate_series(1, $2::bigint) i
            """,
            programme_id,
            transactions,
            members,
            step,
        )
        _say(f"  {transactions:,} transactions in {time.perf_counter() - t1:.0f} s")
        t2 = time.perf_counter()
        ids = f"(SELECT $1::bigint UNION ALL SELECT 1000000 + g FROM generate_series(1, {others}) g)"
        today = "(now() AT TIME ZONE 'Asia/Shanghai')::date"
        await conn.execute(
            f"""
            INSERT INTO daily_point_flows (programme_id, day, kind, points, money_micros, tx_count)
            SELECT p, {today} - d, k, 1000 + (d * 7) % 500, (1000 + (d * 7) % 500) * 10000, 100
            FROM {ids} AS ps(p), generate_series(0, {DAYS - 1}) d,
                 unnest(ARRAY['issued','redeemed','expired','clawed_back','adjusted']) k
            """,
            programme_id,
        )
        await conn.execute(
            f"""
            INSERT INTO daily_member_stock (programme_id, day, available, pending, held)
            SELECT p, {today} - d, 300, 20, 5 FROM {ids} AS ps(p), generate_series(0, {DAYS - 1}) d
            """,
            programme_id,
        )
        await conn.execute(
            f"""
            INSERT INTO daily_members (programme_id, day, new_members, active_members)
            SELECT p, {today} - d, 900, 25000 FROM {ids} AS ps(p), generate_series(0, {DAYS - 1}) d
            """,
            programme_id,
        )
        await conn.execute(
            f"""
            INSERT INTO daily_budget_flows (programme_id, budget_id, day, issued, cap_change)
            SELECT $1, b.id, {today} - d, 40, CASE WHEN d % 30 = 0 THEN 2000 ELSE 0 END
            FROM budgets b, generate_series(0, {DAYS - 1}) d WHERE b.programme_id = $1
            """,
            programme_id,
        )
        await conn.execute(
            "INSERT INTO budget_flow_totals (programme_id, budget_id, issued, cap) "
            "SELECT programme_id, budget_id, sum(issued), sum(cap_change) FROM daily_budget_flows GROUP BY 1, 2"
        )
        await conn.execute(
            f"""
            INSERT INTO weekly_tier_moves (programme_id, week, kind, from_tier, to_tier, moves)
            SELECT $1, date_trunc('week', {today} - w * 7)::date, m.kind, m.f, m.t, 50 + w % 40
            FROM generate_series(0, 156) w,
                 (VALUES ('promoted', 'bronze', 'silver'), ('promoted', 'silver', 'gold'),
                         ('demoted', 'gold', 'silver'), ('demoted', 'silver', 'bronze')) m(kind, f, t)
            """,
            programme_id,
        )
        await conn.execute(
            f"""
            INSERT INTO expiry_forecast (programme_id, month, points, money_micros)
            SELECT $1, (date_trunc('month', {today}) + make_interval(months => i))::date, 50000, 500000000
            FROM generate_series(0, 11) i
            """,
            programme_id,
        )
        await conn.execute(
            "INSERT INTO report_watermarks (name, upto) VALUES ('ledger', now()) "
            "ON CONFLICT (name) DO UPDATE SET upto = now()"
        )
        await conn.execute("DELETE FROM report_deltas")
        _say(f"  rollup rows for {others + 1} programmes x {DAYS} days in {time.perf_counter() - t2:.0f} s")
        await conn.execute("VACUUM ANALYZE")
        return programme_id
    finally:
        await conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> dict[str, float]:
    """p50 and p95 in ms of ``n`` calls after 3 warm-ups (bench.console uses it too)."""
    for _ in range(3):
        await fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(_pct(samples, 0.5), 3), "p95_ms": round(_pct(samples, 0.95), 3)}


async def dashboard(url: str, programme_id: int, members: int, iterations: int) -> dict[str, Any]:
    from loyalty.reports import service

    engine = create_engine(url, pool_size=1)
    today = datetime.now(UTC).date()
    results: dict[str, Any] = {}
    try:
        async with engine.connect() as conn:
            rng = random.Random(7)

            async def pk() -> None:
                await conn.execute(
                    text("SELECT external_id FROM members WHERE programme_id = :p AND id = :i"),
                    {"p": programme_id, "i": rng.randrange(1, members)},
                )

            def since(days: int) -> Any:
                return today - timedelta(days=days - 1)

            reads: dict[str, Callable[[], Awaitable[Any]]] = {
                "pk select (baseline)": pk,
                "daily_flows 90 days": lambda: service.daily_flows(conn, programme_id, since(90), today),
                "daily_flows 365 days": lambda: service.daily_flows(conn, programme_id, since(365), today),
                "liability_series 365 days": lambda: service.liability_series(
                    conn, programme_id, since(365), today
                ),
                "forecast": lambda: service.forecast(conn, programme_id),
                "stock": lambda: service.stock(conn, programme_id),
                "stock_series 365 days": lambda: service.stock_series(conn, programme_id, since(365), today),
                "members_by_tier": lambda: service.members_by_tier(conn, programme_id),
                "tier_moves_per_week 365 days": lambda: service.tier_moves_per_week(
                    conn, programme_id, since(365), today
                ),
                "new_and_active_members 365 days": lambda: service.new_and_active_members(
                    conn, programme_id, since(365), today
                ),
                f"budget_burn 90 days ({BUDGETS} budgets)": lambda: service.budget_burn(
                    conn, programme_id, since(90), today
                ),
            }
            for name, fn in reads.items():
                results[name] = await timed(fn, iterations)
            base = results["pk select (baseline)"]["p50_ms"]
            for name, row in results.items():
                row["ratio_p50"] = round(row["p50_ms"] / base, 1)
                _say(
                    f"  {name:38s} p50 {row['p50_ms']:8.2f} ms  p95 {row['p95_ms']:8.2f} ms  x{row['ratio_p50']}"
                )
            plan = await _plan(conn, programme_id, since(365), today)
            results["plan daily_flows 365 days"] = plan
            _say(f"  plan of the 365-day flows read: {plan}")
    finally:
        await engine.dispose()
    return results


async def _plan(conn: AsyncConnection, programme_id: int, since: Any, until: Any) -> str:
    row = await conn.execute(
        text(
            "EXPLAIN (FORMAT JSON) SELECT day, kind, points, money_micros, tx_count FROM daily_point_flows "
            "WHERE programme_id = :p AND day BETWEEN :s AND :u ORDER BY day, kind"
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    node = row.scalar_one()[0]["Plan"]
    while node.get("Plans") and node["Node Type"] in ("Sort", "Gather", "Result"):
        node = node["Plans"][0]
    return f"{node['Node Type']} on {node.get('Index Name', node.get('Relation Name'))}"


# 3. Rollup throughput ---------------------------------------------------------------------------


async def rollup_throughput(url: str, earns: int) -> dict[str, Any]:
    from loyalty.reports import tasks

    conn = await asyncpg.connect(url)
    try:
        programme_id = await new_programme(conn, "rollup", 10_000, 10)
        await conn.execute("UPDATE report_watermarks SET upto = now()")
        await conn.execute(
            "SELECT ledger_earn($1, NULL, NULL, 'm' || (1 + i % 10000), 'b' || (1 + i % 10), 10, false, NULL, NULL, "
            "NULL, NULL, NULL, 'bench') FROM generate_series(1, $2::int) i",
            programme_id,
            earns,
        )
    finally:
        await conn.close()
    engine = create_engine(url, pool_size=1)
    try:
        t = time.perf_counter()
        rolled, _ = await tasks.rollup(engine, margin_seconds=0)
        seconds = time.perf_counter() - t
    finally:
        await engine.dispose()
    _say(f"  {rolled:,} transactions rolled up in {seconds:.2f} s: {rolled / seconds:,.0f}/s")
    return {"transactions": rolled, "seconds": round(seconds, 3), "per_s": round(rolled / seconds)}


async def run(args: argparse.Namespace) -> None:
    with stack.servers(args.data_dir) as settings:
        assert settings.database_url is not None
        _say(f"creating {DATABASE} ...")
        url = await stack.recreate_database(settings.database_url, DATABASE)
        out: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(),
            "settings": {
                "members": args.members,
                "transactions": args.transactions,
                "other_programmes": args.other_programmes,
                "iterations": args.iterations,
                "earn_seconds": args.earn_seconds,
                "earn_rounds": args.earn_rounds,
                "earn_connections": EARN_CONNECTIONS,
            },
        }
        _say(
            f"earn cost ({EARN_CONNECTIONS} connections, {args.earn_rounds} rounds of {args.earn_seconds} s):"
        )
        out["earn_cost"] = await earn_cost(url, args.earn_seconds, args.earn_rounds)
        _say("building the large programme ...")
        t = time.perf_counter()
        programme_id = await build_large(url, args.members, args.transactions, args.other_programmes)
        out["build_seconds"] = round(time.perf_counter() - t, 1)
        _say(f"dashboard reads ({args.iterations} each):")
        out["reads"] = await dashboard(url, programme_id, args.members, args.iterations)
        _say("rollup job:")
        out["rollup"] = await rollup_throughput(url, args.rollup_earns)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        _say(f"wrote {args.output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--transactions", type=int, default=2_000_000)
    parser.add_argument("--other-programmes", type=int, default=300, help="rollup rows of other programmes")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--earn-seconds", type=float, default=5.0)
    parser.add_argument("--earn-rounds", type=int, default=3)
    parser.add_argument("--rollup-earns", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=Path(".loyalty/bench"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.transactions, args.other_programmes = 20_000, 50_000, 10
        args.iterations, args.earn_seconds, args.earn_rounds, args.rollup_earns = 20, 1.0, 1, 2_000
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
