"""`python -m bench.console` (part of `make bench`; alone: `make bench-console`): console page
times on the demo programme and on a large one (1M members, 10M transactions by default).

Pages are fetched through the whole application (session guard, services, templates) with an
in-process ASGI client logged in as an admin, so the figures are the server's time per page
without the network. Each page's p50/p95 comes with its ratio to a primary-key SELECT on
PostgreSQL measured in the same run, and to the bare /health/live answer through the same
stack: on a shared, noisy machine the ratios hold where absolute times do not.

python -m bench.console                            # 1M members, 10M transactions (a few minutes)
python -m bench.console --transactions 2000000     # quicker
python -m bench.console --quick                    # a smoke run (10k members)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

from bench import reports, stack
from loyalty.settings import ensure_secret_key

DATABASE = "loyalty_bench_console"
RESULTS = Path(__file__).resolve().parent / "results" / "console.json"
REAL_MEMBERS = 200
PASSWORD = "bench console password"
TARGET_P95_MS = 100.0


def _say(message: str) -> None:
    print(message, flush=True)


async def _real_members(url: str, programme_id: int) -> list[str]:
    """Members with accounts, lots and a history (the bulk ones are rows for search only)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "SELECT ledger_open_member($1, 'real' || i, jsonb_build_object('email', 'real' || i || '@example.invalid'))"
            " FROM generate_series(1, $2::int) i",
            programme_id,
            REAL_MEMBERS,
        )
        await conn.execute(
            "SELECT ledger_earn($1, NULL, NULL, 'real' || (1 + i % $3), 'b' || (1 + i % 10), 10 + i % 90, false,"
            " NULL, NULL, NULL, NULL, NULL, 'bench') FROM generate_series(1, $2::int) i",
            programme_id,
            REAL_MEMBERS * 30,
            REAL_MEMBERS,
        )
    finally:
        await conn.close()
    return [f"real{i}" for i in range(1, REAL_MEMBERS + 1)]


async def _operator(url: str, programme_code: str, email: str) -> None:
    from loyalty.console.service import create_operator
    from loyalty.db import create_engine

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await create_operator(
                conn, email=email, programme_code=programme_code, role="admin", password=PASSWORD
            )
    finally:
        await engine.dispose()


async def pages(
    settings: Any,
    programme_code: str,
    email: str,
    members: list[str],
    search_ids: list[str],
    n: int,
    attribute: Callable[[str], str],
) -> dict[str, Any]:
    """Log in and time each page; fail loudly if a page does not answer 200."""
    from litestar.testing import AsyncTestClient

    from loyalty.app import create_app

    rng = random.Random(11)
    app = create_app(dataclasses.replace(settings, rate_limit_per_ip=10**9, rate_limit_per_credential=10**9))
    results: dict[str, Any] = {}
    async with AsyncTestClient(app=app) as client:
        login_page = await client.get("/console/login")
        csrf = re.search(r'name="_csrf" value="([^"]+)"', login_page.text)
        assert csrf, "no login form"
        r = await client.post(
            "/console/login",
            data={"email": email, "password": PASSWORD, "_csrf": csrf.group(1), "next": "/console"},
            follow_redirects=False,
        )
        assert r.status_code == 303, f"login failed: {r.status_code}"

        def get(path: Callable[[], str]) -> Callable[[], Awaitable[None]]:
            async def fetch() -> None:
                target = path()
                answer = await client.get(target)
                if answer.status_code != 200:
                    raise RuntimeError(f"{target} answered {answer.status_code}: {answer.text[:300]}")

            return fetch

        conn = await asyncpg.connect(settings.database_url)
        try:

            async def pk() -> None:
                await conn.fetchval("SELECT external_id FROM members WHERE id = $1", rng.randrange(1, 1000))

            today = datetime.now(UTC).date()
            year_ago = today - timedelta(days=364)
            checks: dict[str, Callable[[], Awaitable[None]]] = {
                "pk select (PostgreSQL baseline)": pk,
                "GET /health/live (stack baseline)": get(lambda: "/health/live"),
                "dashboard (30 days)": get(lambda: "/console"),
                "dashboard (90 days)": get(lambda: "/console?days=90"),
                "dashboard (365 days, from/to)": get(lambda: f"/console?since={year_ago}&until={today}"),
                "member search by id": get(lambda: f"/console/members?q={rng.choice(search_ids)}"),
                "member search by id prefix": get(lambda: f"/console/members?q={rng.choice(search_ids)[:5]}"),
                "member search by attribute": get(
                    lambda: f"/console/members?by=attribute&q={quote(attribute(rng.choice(members)))}"
                ),
                "member 360": get(lambda: f"/console/members/{rng.choice(members)}"),
            }
            for name, fn in checks.items():
                results[name] = await reports.timed(fn, n)
        finally:
            await conn.close()
    base_pg = results["pk select (PostgreSQL baseline)"]["p50_ms"]
    base_stack = results["GET /health/live (stack baseline)"]["p50_ms"]
    for name, row in results.items():
        row["x_pk_select"] = round(row["p50_ms"] / base_pg, 1)
        row["x_health"] = round(row["p50_ms"] / base_stack, 1)
        verdict = "" if "baseline" in name else ("  ok" if row["p95_ms"] < TARGET_P95_MS else "  OVER 100 ms")
        _say(
            f"  {name:36s} p50 {row['p50_ms']:8.2f} ms  p95 {row['p95_ms']:8.2f} ms"
            f"  x{row['x_pk_select']} pk  x{row['x_health']} health{verdict}"
        )
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with stack.servers(args.data_dir) as served:
        assert served.database_url is not None
        _say(f"creating {DATABASE} ...")
        url = await stack.recreate_database(served.database_url, DATABASE)
        settings = ensure_secret_key(
            dataclasses.replace(served, database_url=url, data_dir=args.data_dir, log_level="WARNING")
        )
        out: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(),
            "settings": {
                "members": args.members,
                "transactions": args.transactions,
                "iterations": args.iterations,
            },
        }
        from loyalty import demo

        _say("seeding the demo programme ...")
        await demo.seed(settings)
        await _operator(url, demo.CODE, "bench-demo@example.invalid")
        _say(f"demo programme pages ({args.iterations} each):")
        demo_members = [f"m{n:04d}" for n in range(1, demo.MEMBERS + 1)]
        out["demo"] = await pages(
            settings,
            demo.CODE,
            "bench-demo@example.invalid",
            demo_members,
            demo_members,
            args.iterations,
            lambda _: "city = Shanghai",
        )
        _say(
            f"building the large programme ({args.members:,} members, {args.transactions:,} transactions) ..."
        )
        t = time.perf_counter()
        programme_id = await reports.build_large(url, args.members, args.transactions, args.other_programmes)
        real = await _real_members(url, programme_id)
        out["build_seconds"] = round(time.perf_counter() - t, 1)
        await _operator(url, "large", "bench-large@example.invalid")
        _say(f"large programme pages ({args.iterations} each):")
        bulk = [f"x{random.Random(5).randrange(1, args.members)}" for _ in range(50)]
        out["large"] = await pages(
            settings,
            "large",
            "bench-large@example.invalid",
            real,
            bulk,
            args.iterations,
            lambda member: f"email = {member}@example.invalid",
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        _say(f"wrote {args.output}")
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--other-programmes", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=Path(".loyalty/bench"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.transactions, args.other_programmes, args.iterations = 10_000, 50_000, 5, 20
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
