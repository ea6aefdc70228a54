"""Earning-rule replay at size: 1M synthetic order events (generate_series) over 90 days of
100,000 members, replayed with a three-rule draft (a base rate, a category filter, a condition on
tags with a day cap). Prints the replay's throughput and its ratio to a raw PostgreSQL scan that
fetches the same rows, in the same run.

    make bench-replay            (BENCH_ARGS="--events 200000" for a smaller run)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec

from bench import stack
from loyalty.db import create_engine

TARGET_S = 60.0
DAYS = 90
DRAFT = [
    {"code": "spend", "event_type": "order_completed", "budget": "base",
     "formula": {"kind": "per_unit", "points": 1, "per": 100}},
    {"code": "shoes-double", "event_type": "order_completed", "budget": "base",
     "event_filter": {"categories": ["shoes"]}, "formula": {"kind": "per_unit", "points": 1, "per": 100}},
    {"code": "vip-bonus", "event_type": "order_completed", "budget": "base", "cap_per_day": 20,
     "condition": {"fact": "tags", "op": "contains", "value": "vip"}, "formula": {"kind": "fixed", "points": 15}},
]  # fmt: skip


async def seed(url: str, events: int, members: int) -> int:
    from loyalty.http.principal import Principal
    from loyalty.ledger import schemas, service
    from loyalty.programmes.service import create_programme

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            programme_id = await create_programme(conn, code="replay", name="rule replay")
        who = Principal(programme_id=programme_id, programme_code="replay", role="operator")
        async with engine.begin() as conn:
            budget = schemas.BudgetCreate(code="base", cap=10**12, unit_cost_micros=10_000)
            await service.create_budget(conn, who, budget, None)  # type: ignore[arg-type]
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "WITH acc AS (INSERT INTO accounts (programme_id, kind, shards) "
                "  SELECT $1, 'member', 1 FROM generate_series(1, $2::int) RETURNING id), "
                "bal AS (INSERT INTO account_balances (programme_id, account_id, shard) SELECT $1, id, 0 FROM acc) "
                "INSERT INTO members (programme_id, external_id, account_id) "
                "SELECT $1, 'r' || row_number() OVER (ORDER BY id), id FROM acc",
                programme_id,
                members,
            )
            await conn.execute(
                "INSERT INTO member_facts (programme_id, member_id, tags) SELECT $1, id, "
                "CASE WHEN id % 10 = 0 THEN ARRAY['vip'] ELSE ARRAY[]::text[] END "
                "FROM members WHERE programme_id = $1",
                programme_id,
            )
            await conn.execute(
                "INSERT INTO earning_rules (programme_id, code, event_type, formula, budget) "
                "VALUES ($1, 'spend', 'order_completed', '{\"kind\": \"per_unit\", \"points\": 1, \"per\": 100}', 'base')",
                programme_id,
            )
            # Each event as the live path stores it: amount, items, the points and answer of 'spend'.
            await conn.execute(
                """
                INSERT INTO member_events (programme_id, member_id, event_id, type, occurred_at, order_ref,
                                           amount, currency, channel, payload, points, response)
                SELECT $1, m.id, 'ev' || g, 'order_completed', now() - make_interval(secs => (g * 7777 % ($4 * 86400))),
                       'o' || g, a, 'CNY', 'web',
                       jsonb_build_object('items', jsonb_build_array(jsonb_build_object(
                           'sku', 's' || (g % 50), 'category', CASE WHEN g % 5 = 0 THEN 'shoes' ELSE 'food' END,
                           'price', a, 'quantity', 1))),
                       a / 100,
                       jsonb_build_object('rules', jsonb_build_array(jsonb_build_object('code', 'spend', 'points', a / 100)))
                FROM generate_series(1, $2::bigint) g
                CROSS JOIN LATERAL (SELECT 1000 + (g * 104729 % 50000) AS a) amt
                JOIN members m ON m.programme_id = $1 AND m.external_id = 'r' || (1 + g % $3)
                """,
                programme_id,
                events,
                members,
                DAYS,
            )
        await conn.execute("VACUUM ANALYZE members, member_facts, member_events, member_tiers")
    finally:
        await conn.close()
    return programme_id


async def raw_scan(url: str, programme_id: int, since: datetime, until: datetime) -> float:
    """The same rows, same order, fetched by a client: what any replay must at least pay."""
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        async with conn.transaction(readonly=True):
            n = 0
            async for _ in conn.cursor(
                "SELECT e.member_id, m.external_id, e.type, e.occurred_at, e.amount, e.currency, e.channel,"
                " e.payload->'items', e.points, f.tags FROM member_events e"
                " JOIN members m ON m.programme_id = e.programme_id AND m.id = e.member_id"
                " LEFT JOIN member_facts f ON f.programme_id = e.programme_id AND f.member_id = e.member_id"
                " WHERE e.programme_id = $1 AND e.occurred_at >= $2 AND e.occurred_at < $3"
                " ORDER BY e.member_id, e.id",
                programme_id,
                since,
                until,
                prefetch=20_000,
            ):
                n += 1
        return time.perf_counter() - started
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> int:
    from loyalty.activity import replay
    from loyalty.http.principal import Principal

    with stack.servers(args.data_dir) as settings:
        assert settings.database_url is not None
        print("creating and seeding loyalty_bench ...", flush=True)
        url = await stack.recreate_database(settings.database_url)
        started = time.perf_counter()
        programme_id = await seed(url, args.events, args.members)
        print(
            f"seeded {args.events:,} events of {args.members:,} members in {time.perf_counter() - started:.1f} s"
        )
        until = datetime.now(UTC) + timedelta(minutes=1)
        since = until - timedelta(days=DAYS + 1)
        scan = await raw_scan(url, programme_id, since, until)
        who = Principal(programme_id=programme_id, programme_code="replay", role="operator")
        req = msgspec.convert({"rules": DRAFT, "since": since, "until": until}, replay.ReplayIn)
        ticks: list[int] = []

        async def progress(done: int, total: int) -> None:
            ticks.append(done * 100 // max(total, 1))

        engine = create_engine(url, pool_size=1)
        try:
            started = time.perf_counter()
            async with engine.connect() as conn, conn.begin():
                result = await replay.run_replay(conn, who, req, progress=progress)
            seconds = time.perf_counter() - started
        finally:
            await engine.dispose()
    rate = result.events / seconds
    print(f"raw scan:  {result.events:,} rows in {scan:.2f} s ({result.events / scan:,.0f} rows/s)")
    print(f"replay:    {result.events:,} events in {seconds:.2f} s ({rate:,.0f} events/s), "
          f"{seconds / scan:.1f}x the raw scan; {len(ticks)} progress updates")  # fmt: skip
    print(f"draft {result.draft_points:,} points vs actual {result.actual_points:,} "
          f"(delta {result.delta_points:+,}); {len(result.days)} days, {len(result.rules)} rules")  # fmt: skip
    ok = seconds < TARGET_S * args.events / 1_000_000
    print(
        f"target: {args.events:,} events under {TARGET_S * args.events / 1_000_000:.0f} s: {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=Path(".loyalty/bench"))
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
