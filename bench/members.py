"""`python -m bench.members`: the Member 360's reads on a programme of 1M members.

Builds the members with generate_series (each with an email and a country attribute), gives one
of them a real history through the posting functions, then measures p50/p95 of what the console
runs for the search page (an id prefix, an attribute) and for the 360 page (every service read
it makes), with a primary-key select in the same run for scale, and prints the search plans.

python -m bench.members            # 1M members (a minute or two here)
python -m bench.members --quick    # 20,000 members, a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from bench import stack
from bench.reports import new_programme, timed
from loyalty.db import create_engine
from loyalty.http.principal import Principal

DATABASE = "loyalty_bench_members"
RESULTS = Path(__file__).resolve().parent / "results" / "members.json"
HERO = "x0500000"


def _say(message: str) -> None:
    print(message, flush=True)


async def build(url: str, members: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        programme_id = await new_programme(conn, "large", 0, 1)
        t = time.perf_counter()
        await conn.execute(
            "INSERT INTO members (programme_id, external_id, account_id, attributes) "
            "SELECT $1, 'x' || lpad(i::text, 7, '0'), 0, jsonb_build_object('email', 'user' || i || "
            "'@example.com', 'country', (ARRAY['CN','FR','DE','US'])[1 + i % 4]) "
            "FROM generate_series(1, $2::int) i WHERE 'x' || lpad(i::text, 7, '0') <> $3",
            programme_id,
            members,
            HERO,
        )
        _say(f"  {members:,} members in {time.perf_counter() - t:.0f} s")
        # One member with a real account and history: the one whose 360 is read.
        await conn.execute(
            'SELECT ledger_open_member($1, $2, \'{"email": "hero@example.com"}\')', programme_id, HERO
        )
        for i in range(60):
            await conn.execute(
                "SELECT ledger_earn($1, NULL, NULL, $2, 'b1', 100, false, $3, 'bench', NULL, "
                "now() + interval '1 year', NULL, 'bench')",
                programme_id,
                HERO,
                f"order-{i}",
            )
        await conn.execute("VACUUM ANALYZE members")
        return programme_id
    finally:
        await conn.close()


async def reads(url: str, programme_id: int, iterations: int) -> dict[str, Any]:
    from loyalty.console.pages.members import _member_context
    from loyalty.members import repository
    from loyalty.members import service as members

    engine = create_engine(url, pool_size=1)
    who = Principal(
        programme_id=programme_id, programme_code="large", role="operator", timezone="Asia/Shanghai"
    )
    out: dict[str, Any] = {}
    try:
        async with engine.connect() as conn:

            async def pk() -> Any:
                return (
                    await conn.execute(text("SELECT 1 FROM programmes WHERE id = :p"), {"p": programme_id})
                ).all()

            async def by_prefix() -> Any:
                return await members.search(conn, who, query="x04999", by="id", cursor=None, limit=25)

            async def by_email() -> Any:
                return await members.search(
                    conn, who, query="email = user777777@example.com", by="attribute", cursor=None, limit=25
                )

            async def by_country() -> Any:
                return await members.search(
                    conn, who, query="country = FR", by="attribute", cursor=None, limit=25
                )

            async def page_360() -> Any:
                return await _member_context(conn, who, HERO, None)

            for name, fn in (
                ("primary_key_select", pk),
                ("search_id_prefix", by_prefix),
                ("search_email", by_email),
                ("search_common_attribute", by_country),
                ("member_360_reads", page_360),
            ):
                out[name] = await timed(fn, iterations)
                _say(f"  {name:<26} p50 {out[name]['p50_ms']:>8.2f} ms  p95 {out[name]['p95_ms']:>8.2f} ms")
            plans: list[tuple[str, dict[str, Any]]] = [
                ("plan_id_prefix", {"id_prefix": "x04999"}),
                ("plan_email", {"attribute_docs": ['{"email": "user777777@example.com"}']}),
            ]
            for label, kwargs in plans:
                sql, params = repository.search_statement(programme_id, limit=26, **kwargs)
                plan = "\n".join(r[0] for r in await conn.execute(text("EXPLAIN ANALYZE " + sql), params))
                out[label] = plan
                _say(plan)
    finally:
        await engine.dispose()
    return out


async def run(args: argparse.Namespace) -> None:
    with stack.servers(args.data_dir) as settings:
        assert settings.database_url is not None
        _say(f"creating {DATABASE} ...")
        url = await stack.recreate_database(settings.database_url, DATABASE)
        out: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(),
            "settings": {"members": args.members, "iterations": args.iterations},
        }
        programme_id = await build(url, args.members)
        _say(f"reads ({args.iterations} each):")
        out["reads"] = await reads(url, programme_id, args.iterations)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        _say(f"wrote {args.output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.members", description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=Path(".loyalty/bench"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.iterations = 20_000, 20
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
