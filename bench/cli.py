"""`python -m bench`: seed a fresh database, run pgbench baselines and the HTTP workloads, report.

python -m bench                       # the full run (~20 s per measurement; ~20 min on 2 quiet cores)
python -m bench --quick               # a smoke run (~5 s per measurement, fewer of them)
python -m bench --workloads earn-spread,earn-hot --clients 16 --duration 10
python -m bench --workloads events,tier-reeval --baselines '' --clients 16 --duration 10
python -m bench --workloads events --clients 64 --profile events   # + a py-spy profile of the API
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import asyncpg
import psutil

from bench import checkout as checkout_bench
from bench import pgbench, profiling, report, stack, tiers, workloads
from bench.cpu import CpuProbe
from bench.httpload import connect, drive
from bench.report import OBSERVABILITY_OFF, BaselineRow, HttpRow, Report
from bench.workloads import CHECKOUT, CONSUME, HTTP_WORKLOADS, REFERENCES, TIER_REEVAL, Target

API_FACTORY = "loyalty.app:app_from_env"
# The references, each on its own server: HTTP alone, HTTP + one asyncpg SELECT (bench/bare_app.py),
# the same SELECT through Litestar and SQLAlchemy (bench/minimal_app.py).
REFERENCE_FACTORIES = {
    "bare-http": "bench.bare_app:http_app_from_env",
    "bare-select": "bench.bare_app:select_app_from_env",
    "minimal-select": "bench.minimal_app:app_from_env",
}
API_WORKERS = 2
# The second API run with metrics and request ids off repeats these workloads only: the cheapest
# write (where a fixed cost shows most) and the heaviest.
OBSERVABILITY_WORKLOADS = "earn-spread,events"
PROFILEABLE = (*REFERENCES, *HTTP_WORKLOADS, CONSUME)
# The pgbench scripts the printed ratios divide by; the others (engine earn-hot, engine spend)
# run when named in --baselines.
DEFAULT_BASELINES = "raw earn-spread,raw earn-hot,raw spend,engine earn-spread"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run (20)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured seconds before each HTTP run (3)"
    )
    parser.add_argument("--clients", default="16,64", help="concurrent connections, comma-separated (16,64)")
    parser.add_argument(
        "--batch-clients",
        default="1,2",
        help="concurrent connections for batch-earn (1,2): bulk imports and campaign grants are a few large "
        "requests at a time, 10,000 items each, not dozens in parallel",
    )
    parser.add_argument(
        "--workloads",
        default=",".join((*HTTP_WORKLOADS, TIER_REEVAL, CHECKOUT)),
        help=f"workloads, comma-separated ({','.join((*HTTP_WORKLOADS, TIER_REEVAL, CHECKOUT))})",
    )
    parser.add_argument(
        "--reeval-members",
        type=int,
        default=tiers.REEVAL_MEMBERS,
        help="members of the tier-reeval programme (1,000,000; --quick: 100,000, the 1M time projected)",
    )
    parser.add_argument(
        "--baselines",
        default=None,
        help=f"pgbench scripts, comma-separated, '' for none (default: those the ratios use, {DEFAULT_BASELINES}; "
        f"--quick: none; all: {','.join(pgbench.SCRIPTS)})",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=0,
        help="LOYALTY_DB_POOL_SIZE per API worker; 0 (default) = the client count, because granian "
        "does not spread connections evenly and an undersized pool opens and closes overflow "
        "connections on every request",
    )
    parser.add_argument(
        "--events-load",
        type=float,
        default=0.5,
        help="after the closed-loop events run, events open loop at this share of its rate on as many "
        "connections (0.5; 0 to skip)",
    )
    parser.add_argument(
        "--no-minimal",
        action="store_true",
        help="skip the reference apps (minimal-select, bare-http, bare-select): no ratio targets then",
    )
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the bare-stack references (bare-http, bare-select)"
    )
    parser.add_argument(
        "--observability-off",
        default=None,
        help="workloads run again on an API with metrics and request ids off (LOYALTY_METRICS_ENABLED="
        f"false), comma-separated ({OBSERVABILITY_WORKLOADS}; --quick: none; '' for none)",
    )
    parser.add_argument(
        "--no-observability-off", action="store_true", help="the same as --observability-off ''"
    )
    parser.add_argument(
        "--check-runs",
        type=int,
        default=checkout_bench.CHECK_RUNS,
        help=f"runs of the checkout check at {checkout_bench.RATE:.0f}/s; its p99 is their median "
        f"({checkout_bench.CHECK_RUNS})",
    )
    parser.add_argument(
        "--profile",
        metavar="WORKLOAD",
        choices=PROFILEABLE,
        help="after WORKLOAD's measured run at the largest client count, run it once more under py-spy: "
        "a speedscope file in bench/results/ and a summary of where the API workers' CPU went "
        f"({', '.join(PROFILEABLE)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 5 s measured, 1 s warm-up, no pgbench baselines and no observability-off run "
        "unless named, 100,000 members re-evaluated",
    )
    parser.add_argument(
        "--no-console", action="store_true", help="skip the console page times (bench/console.py)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".loyalty/bench"), help="embedded servers' data"
    )
    parser.add_argument("--output", type=Path, default=report.RESULTS_FILE, help="where to write the JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 5.0, 1.0
        args.reeval_members = min(args.reeval_members, 100_000)
        if args.baselines is None:
            args.baselines = ""
        if args.observability_off is None:
            args.observability_off = ""
    if args.baselines is None:
        args.baselines = DEFAULT_BASELINES
    if args.no_observability_off:
        args.observability_off = ""
    elif args.observability_off is None:
        args.observability_off = OBSERVABILITY_WORKLOADS
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        asyncio.run(run(args))
        if not args.no_console:
            # The console's page times on the demo and on a 1M-member programme (bench/console.py).
            from bench import console as console_bench

            console_bench.main(["--quick"] if args.quick else [])
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


async def run(args: argparse.Namespace) -> None:
    clients = [int(n) for n in _split(args.clients)]
    batch_clients = [int(n) for n in _split(args.batch_clients)]
    names = _split(args.workloads)
    batch = [name for name in names if name == "batch-earn"]
    reeval = TIER_REEVAL in names
    checkout = CHECKOUT in names
    names = [name for name in names if name not in ("batch-earn", TIER_REEVAL, CHECKOUT)]
    for name in names:
        workloads.build(name, Target("127.0.0.1", 0, ""))  # fail fast on a typo
    scripts = _split(args.baselines)
    unknown = set(scripts) - set(pgbench.SCRIPTS)
    if unknown:
        raise SystemExit(f"unknown baselines {sorted(unknown)}; choose from {list(pgbench.SCRIPTS)}")

    with stack.servers(args.data_dir) as settings:
        assert settings.database_url is not None
        _say("creating and seeding loyalty_bench ...")
        url = await stack.recreate_database(settings.database_url)
        seeded = await stack.seed(url)
        await pgbench.create_raw_schema(url)
        await stack.settle(url)
        version, postmaster = await _server_facts(url)
        result = Report(
            machine=report.machine_info(version),
            settings={
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "clients": clients,
                "batch_clients": batch_clients,
                "workloads": names + batch + ([TIER_REEVAL] if reeval else []),
                "reeval_members": args.reeval_members if reeval else 0,
                "baselines": scripts,
                "api_workers": API_WORKERS,
                "db_pool_size_per_worker": args.pool_size or "= clients",
                "references": []
                if args.no_minimal
                else [r for r in REFERENCES if not (args.no_bare and r != "minimal-select")],
                "observability_off": _split(args.observability_off),
                "check_runs": args.check_runs if checkout else 0,
                "consume_clients": clients if checkout else [],
                "profile": args.profile,
                "granian_command": stack.Granian(API_FACTORY, {}).command()[1:],
            },
            started_at=_now(),
        )
        probe = CpuProbe(api_pid=None, postmaster_pid=postmaster)
        await _baselines(result, url, scripts, clients, args.duration, seeded.programme_id, probe)
        prepared = False
        references = result.settings["references"]
        observed = [name for name in _split(args.observability_off) if name in names]
        for n in clients if names else []:
            # A fresh server per client count, its pool sized for it (see --pool-size).
            env = stack.api_env(settings, url, args.pool_size or n)
            for reference in references:
                with stack.Granian(REFERENCE_FACTORIES[reference], env, workers=API_WORKERS) as server:
                    server.start("/accounts/1001")
                    await _http(result, server, "", [reference], n, args, url, postmaster)
            with stack.Granian(API_FACTORY, env, workers=API_WORKERS) as server:
                server.start("/health/ready")
                if "events" in names and not prepared:
                    await tiers.prepare_events_async(
                        Target(server.host, server.port, seeded.keys["operator"])
                    )
                    prepared = True
                await _http(result, server, seeded.keys["ecommerce"], names, n, args, url, postmaster)
            if observed:
                # The same workloads on an API with metrics and request ids off: their cost, in one run.
                off_env = {**env, "LOYALTY_METRICS_ENABLED": "false"}
                with stack.Granian(API_FACTORY, off_env, workers=API_WORKERS) as server:
                    server.start("/health/ready")
                    await _http(
                        result, server, seeded.keys["ecommerce"], observed, n, args, url, postmaster,
                        suffix=OBSERVABILITY_OFF,
                    )  # fmt: skip
        for n in batch_clients if batch else []:
            env = stack.api_env(settings, url, args.pool_size or max(n, 2))
            with stack.Granian(API_FACTORY, env, workers=API_WORKERS) as server:
                server.start("/health/ready")
                await _http(result, server, seeded.keys["ecommerce"], batch, n, args, url, postmaster)
        if reeval:
            _say(f"tier-reeval: seeding {args.reeval_members} members, then a full re-evaluation ...")
            await _checkpoint(url)
            measured = await tiers.run_reeval(url, args.reeval_members)
            result.tier_reeval = {**asdict(measured), "members_per_s": measured.members_per_s}
            _say(
                f"  {measured.members} members in {measured.seconds:.1f} s: {measured.members_per_s:.0f} members/s"
            )
        if checkout:
            consume_clients = clients or [16]
            _say(
                f"checkout: open loop at {checkout_bench.RATE:.0f}/s ({args.check_runs} runs), then consume at "
                f"{','.join(map(str, consume_clients))} clients, its own database {checkout_bench.DATABASE} ..."
            )
            measured_checkout = await checkout_bench.run(
                rate=checkout_bench.RATE,
                duration=args.duration,
                warmup=args.warmup,
                consume_clients=consume_clients,
                data_dir=args.data_dir,
                settings=settings,
                check_runs=args.check_runs,
                postmaster=postmaster,
                profile=_profile_file(CONSUME, consume_clients[-1]) if args.profile == CONSUME else None,
                profiles=result.profiles,
            )
            result.checkout = [asdict(m) for m in measured_checkout]
            result.checkout_text = checkout_bench.render(measured_checkout)
        result.consistency = await _consistency(url, seeded.programme_id)
        result.finished_at = _now()
    if args.profile and not any(p["workload"] == args.profile for p in result.profiles):
        _say(f"--profile {args.profile}: that workload did not run, so it was not profiled")
    report.evaluate(result, clients)
    print()
    print(report.render(result))
    report.write_json(result, args.output)
    print(f"\nwritten to {args.output}")


async def _baselines(
    result: Report,
    url: str,
    scripts: list[str],
    clients: list[int],
    duration: float,
    programme_id: int,
    probe: CpuProbe,
) -> None:
    if not scripts:
        return
    binary = await pgbench.find_pgbench(url)
    for name in scripts:
        for n in clients:
            _say(f"pgbench {name}, {n} clients ...")
            await _checkpoint(url)
            probe.start()
            measured = await pgbench.run(
                binary, url, pgbench.SCRIPTS[name], clients=n, duration=duration, programme_id=programme_id
            )
            result.baselines.append(BaselineRow(name=name, clients=n, **asdict(measured), cpu=probe.stop()))


async def _http(
    result: Report,
    server: stack.Granian,
    api_key: str,
    names: list[str],
    clients: int,
    args: argparse.Namespace,
    url: str,
    postmaster: int | None,
    suffix: str = "",
) -> None:
    assert server.process is not None
    target = Target(server.host, server.port, api_key)
    probe = CpuProbe(api_pid=server.process.pid, postmaster_pid=postmaster)
    for name in names:
        workload = workloads.build(name, target)
        if name == "batch-earn":
            reason = await _batch_unavailable(url, target)
            if reason:
                _say(f"{name}: skipped: {reason}")
                result.http.append(HttpRow(name, clients, skipped=reason))
                continue
        _say(f"{name}{suffix}, {clients} clients ...")
        await _checkpoint(url)
        measured = await drive(
            target.host, target.port, workload.operation, clients=clients, warmup=args.warmup,
            duration=args.duration, probe=probe,
        )  # fmt: skip
        row = report.http_row(
            name + suffix, clients, measured, units_per_op=workload.units_per_op, unit=workload.unit
        )
        result.http.append(row)
        _say(
            f"  {row.units_per_s:.0f} {row.unit}/s, p99 {row.main_latency.p99_ms:.1f} ms, statuses {row.statuses}"
        )
        if name == args.profile and clients == _profiled_clients(args, name) and not suffix:
            await _profiled(result, server, workload, name, clients, args, url)
        if name == "events" and args.events_load > 0 and row.units_per_s and not suffix:
            # The closed loop measures the ceiling: its latency is mostly the queue (clients / rate).
            # The latency a sender sees below the ceiling is measured at a fixed rate.
            rate = row.units_per_s * args.events_load
            _say(
                f"events, open loop at {rate:.0f}/s ({args.events_load:.0%} of that) on {clients} connections ..."
            )
            await _checkpoint(url)
            fixed = await checkout_bench.open_loop(
                target.host, target.port, workloads.event_requests(target), rate=rate, warmup=args.warmup,
                duration=args.duration, pool=clients, ok_status=201, probe=probe,
            )  # fmt: skip
            result.events_open.append(
                {**asdict(fixed), "name": "events", "clients": clients, "share": args.events_load}
            )
            _say(
                f"  p50 {fixed.p50_ms:.1f} ms, p99 {fixed.p99_ms:.1f} ms, {fixed.ok}/{fixed.sent} answered 201"
            )


def _profiled_clients(args: argparse.Namespace, name: str) -> int:
    """A profile is taken at the largest client count the workload runs at (batch-earn has its own)."""
    return max(int(n) for n in _split(args.batch_clients if name == "batch-earn" else args.clients))


def _profile_file(workload: str, clients: int) -> Path:
    slug = workload.replace("+", "-")
    return report.RESULTS_FILE.parent / f"profile-{slug}-{clients}.speedscope.json"


async def _profiled(
    result: Report,
    server: stack.Granian,
    workload: workloads.Workload,
    name: str,
    clients: int,
    args: argparse.Namespace,
    url: str,
) -> None:
    """The workload once more, its API workers sampled by py-spy; its rate is not a measurement
    (sampling costs the workers a little), the profile is."""
    assert server.process is not None
    path = _profile_file(name, clients)
    _say(f"{name}, {clients} clients, under py-spy -> {path} ...")
    await _checkpoint(url)
    profiler = profiling.Profiler(server.process.pid, path)
    await profiler.start()
    try:
        measured = await drive(
            server.host, server.port, workload.operation, clients=clients, warmup=0.0,
            duration=args.duration, probe=CpuProbe(api_pid=None, postmaster_pid=None),
        )  # fmt: skip
    finally:
        await profiler.stop()
    summary = profiling.summarize(path)
    rate = measured.ops * workload.units_per_op / measured.seconds
    result.profiles.append(
        {
            "workload": name,
            "clients": clients,
            "file": str(path),
            "rate_under_profiler": rate,
            **asdict(summary),
        }
    )
    _say(f"  {summary.samples} samples at {rate:.0f} {workload.unit}/s")


async def _batch_unavailable(url: str, target: Target) -> str | None:
    """Why the batch endpoint cannot be measured (its SQL function is new), or None."""
    if not await stack.function_exists(url, "ledger_earn_batch"):
        return "endpoint not available (no ledger_earn_batch function)"
    factory = workloads.RequestFactory(target, "/v1/earn/batch")
    conn = await connect(target.host, target.port)
    try:
        status, body = await conn.request(
            factory.build(b'{"items":[{"member_id":"m1","budget":"b1","points":1}]}')
        )
    finally:
        conn.close()
    if not 200 <= status < 300:
        return f"endpoint not available (probe answered {status}: {body[:200].decode(errors='replace')})"
    return None


async def _server_facts(url: str) -> tuple[str, int | None]:
    """PostgreSQL's version, and its postmaster's pid when it runs on this machine."""
    conn = await asyncpg.connect(url)
    try:
        version = str(await conn.fetchval("SHOW server_version"))
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        # Asked while our backend still lives: its parent is the postmaster.
        try:
            return version, psutil.Process(backend).ppid()
        except psutil.Error:  # a remote server: no CPU figures for it
            return version, None
    finally:
        await conn.close()


async def _checkpoint(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _consistency(url: str, programme_id: int) -> dict[str, int]:
    """The books still balance after the run: every point is somewhere, no member below zero."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(available + pending + held), 0) AS sum_of_balances, "
            "count(*) FILTER (WHERE a.kind = 'member' AND b.available < 0) AS negative_members "
            "FROM account_balances b JOIN accounts a ON a.programme_id = b.programme_id AND a.id = b.account_id "
            "WHERE b.programme_id = $1",
            programme_id,
        )
        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT txn_id FROM entries WHERE programme_id = $1 "
            "GROUP BY txn_id HAVING sum(amount) <> 0) t",
            programme_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return {
        "sum_of_balances": int(row["sum_of_balances"]),
        "negative_members": int(row["negative_members"]),
        "unbalanced_transactions": int(unbalanced),
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
