"""`make bench-citus`: the hot workloads through the API on one node and on a Citus cluster.

    python -m bench.citus [--duration 8] [--warmup 2] [--clients 16]

In one run on one machine: (a) one node, the embedded PostgreSQL as `make bench` uses it, and
(b) a coordinator and two workers (loyalty.embedded_citus, under --data-dir), each with a fresh
loyalty_bench database seeded as bench/stack.py seeds it. On each: earn spread over 100 budgets,
earn from one hot budget, spend, order events and the checkout check, each on a fresh granian
(2 workers, the pool sized to the clients), closed loop. Then the books are checked (bench's
consistency query and `loyalty ledger verify`). For the cluster, what each workload left on each
node: transactions committed there (pg_stat_database.xact_commit of the database, read after the
API is stopped, so every backend has flushed its counters) and ledger transactions written to the
member shards it holds (citus_shards). The cluster is stopped at the end, also on failure.

On two shared cores the cluster cannot be faster: three postmasters and the hop from the
coordinator to a worker share the cores with the API and the load generator. What this measures
is the cost of that hop, and that the load spreads over the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio

from bench import checkout as checkout_bench
from bench import report, stack, tiers, workloads
from bench.cli import API_FACTORY, API_WORKERS
from bench.cli import _consistency as consistency
from bench.cpu import CpuProbe
from bench.httpload import drive
from bench.workloads import Target
from loyalty.embedded_citus import CitusCluster
from loyalty.migrate import upgrade
from loyalty.settings import Settings

RESULTS_FILE = report.RESULTS_FILE.parent / "citus-latest.json"
WORKLOADS = ("earn-spread", "earn-hot", "spend", "events", "check")
TOPOLOGIES = ("single", "citus")
# The member-scoped ledger tables whose shards the share of rows is counted in.
SHARDED = ("transactions", "entries")


@dataclasses.dataclass
class Topology:
    name: str
    url: str
    programme_id: int
    keys: dict[str, str]
    # Per node (coordinator, worker1, ...): its URL for this database; empty on one node.
    nodes: dict[str, str] = dataclasses.field(default_factory=dict)
    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    consistency: dict[str, Any] = dataclasses.field(default_factory=dict)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.citus", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per workload (8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each (2)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections (16)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated ({','.join(WORKLOADS)})"
    )
    parser.add_argument(
        "--topologies", default=",".join(TOPOLOGIES), help=f"comma-separated ({','.join(TOPOLOGIES)})"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".loyalty/bench-citus"),
        help="the single node's embedded servers in DIR/single, the cluster in DIR/cluster",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="where to write the JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = set(names) - set(WORKLOADS)
    topologies = [n.strip() for n in args.topologies.split(",") if n.strip()]
    if unknown or set(topologies) - set(TOPOLOGIES):
        raise SystemExit(f"choose workloads from {WORKLOADS} and topologies from {TOPOLOGIES}")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        result = asyncio.run(run(args, names, topologies))
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    print()
    print(render(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    failed = any(t["consistency"].get("clean") is False for t in result["topologies"].values())
    return 1 if failed else 0


async def run(args: argparse.Namespace, names: list[str], topologies: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "workloads": names,
            "api_workers": API_WORKERS,
            "db_pool_size_per_worker": args.clients,
            "members": workloads.MEMBERS,
            "budgets": workloads.BUDGETS,
        },
        "started_at": _now(),
        "load_average": {"start": _load()},
        "topologies": {},
    }
    # The single node's PostgreSQL and the Redis both topologies use.
    with stack.servers(args.data_dir / "single") as settings:
        assert settings.database_url is not None
        result["machine"] = report.machine_info(await _version(settings.database_url))
        if "single" in topologies:
            _say("single node: creating and seeding loyalty_bench ...")
            url = await stack.recreate_database(settings.database_url)
            single = await _seeded("single", url)
            await _measure(single, settings, names, args)
            result["topologies"]["single"] = _summary(single)
            result["load_average"]["after_single"] = _load()
        if "citus" in topologies:
            cluster = CitusCluster(args.data_dir / "cluster", workers=2)
            _say("citus: starting a coordinator and 2 workers ...")
            cluster.start()
            try:
                await _flush_redis(settings)
                citus = await _citus_topology(cluster)
                await _measure(citus, settings, names, args)
                summary = _summary(citus)
                summary["rows_per_node"] = _by_node(citus, await _rows_per_node(citus.url))
                result["topologies"]["citus"] = summary
            finally:
                _say("citus: stopping the cluster ...")
                cluster.stop()
            result["load_average"]["after_citus"] = _load()
    result["ratios"] = _ratios(result["topologies"], names)
    result["finished_at"] = _now()
    return result


async def _seeded(name: str, url: str, nodes: dict[str, str] | None = None) -> Topology:
    seeded = await stack.seed(url)
    await stack.settle(url)
    return Topology(name, url, seeded.programme_id, seeded.keys, nodes=nodes or {})


async def _citus_topology(cluster: CitusCluster) -> Topology:
    database = stack.BENCH_DATABASE
    await asyncio.to_thread(cluster.drop_database, database)
    url = await asyncio.to_thread(cluster.prepare_database, database)
    _say("citus: loyalty migrate on the coordinator, then seeding ...")
    await asyncio.to_thread(upgrade, url)
    nodes = {node.name: node.url(database) for node in cluster.nodes}
    return await _seeded("citus", url, nodes)


async def _measure(
    topology: Topology, settings: Settings, names: list[str], args: argparse.Namespace
) -> None:
    env = stack.api_env(settings, topology.url, args.clients)
    prepared: set[str] = set()
    for name in names:
        _say(f"{topology.name}: {name}, {args.clients} clients ...")
        before = await _node_counters(topology)
        try:
            # A fresh server per workload: stopping it ends every backend it used, on every node,
            # so the nodes' counters read afterwards hold all of the workload's transactions.
            with stack.Granian(API_FACTORY, env, workers=API_WORKERS) as server:
                server.start("/health/ready")
                target = Target(server.host, server.port, topology.keys["ecommerce"])
                await _prepare(name, topology, server, prepared)
                measured = await _run_workload(name, target, server, args)
        except Exception as error:  # a workload that fails on a topology is reported, not fatal
            detail = "".join(traceback.format_exception_only(error)).strip()
            _say(f"  failed: {detail}")
            topology.failures[name] = detail
            continue
        await asyncio.sleep(0.5)  # the backends' exits, which flush their statistics
        after = await _node_counters(topology)
        if topology.nodes:
            measured["nodes"] = _deltas(before, after)
        topology.results[name] = measured
        _say(
            f"  {measured['rate']:.0f}/s, p50 {measured['p50_ms']:.1f} ms, p99 {measured['p99_ms']:.1f} ms, "
            f"statuses {measured['statuses']}"
        )
    _say(f"{topology.name}: checking the books ...")
    topology.consistency = await _check_books(topology, settings)


async def _prepare(name: str, topology: Topology, server: stack.Granian, prepared: set[str]) -> None:
    """What a workload needs in the programme before it runs, once per topology."""
    if name == "events" and "events" not in prepared:
        await tiers.prepare_events_async(Target(server.host, server.port, topology.keys["operator"]))
        prepared.add("events")
    if name == "check" and "check" not in prepared:
        # The checkout benchmark's catalogue (a tier flag, a quota, a campaign discount), its
        # tiers and grants given to the members the ledger seed opened.
        await asyncio.to_thread(checkout_bench.setup_catalogue, server.port, topology.keys["operator"])
        await _seed_check(topology.url, topology.programme_id)
        prepared.add("check")


async def _run_workload(
    name: str, target: Target, server: stack.Granian, args: argparse.Namespace
) -> dict[str, Any]:
    assert server.process is not None
    probe = CpuProbe(api_pid=server.process.pid, postmaster_pid=None)
    if name == "check":
        check = await checkout_bench.closed_loop(
            target.host, target.port, checkout_bench.check_request(target.port, target.api_key),
            clients=args.clients, warmup=args.warmup, duration=args.duration, probe=probe,
        )  # fmt: skip
        return {
            "rate": check.rate,
            "p50_ms": check.p50_ms,
            "p99_ms": check.p99_ms,
            "ok": check.ok,
            "statuses": {"200": check.ok, **check.errors},
            "errors": sum(check.errors.values()),
        }
    workload = workloads.build(name, target)
    measured = await drive(
        target.host, target.port, workload.operation, clients=args.clients, warmup=args.warmup,
        duration=args.duration, probe=probe,
    )  # fmt: skip
    row = report.http_row(name, args.clients, measured, units_per_op=1, unit="ops")
    return {
        "rate": row.ops_per_s,
        "p50_ms": row.main_latency.p50_ms,
        "p99_ms": row.main_latency.p99_ms,
        "ok": measured.ops,
        "statuses": row.statuses,
        "errors": row.errors,
    }


async def _seed_check(url: str, programme_id: int) -> None:
    """A third of the members silver, a third gold, a tenth with a grant of the returns quota."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO member_tiers (programme_id, member_id, tier, ladder_version) "
            "SELECT $1, id, (ARRAY['bronze', 'silver', 'gold'])[1 + mod(abs(hashint8(id)::bigint), 3)], 1 "
            "FROM members WHERE programme_id = $1 "
            "ON CONFLICT DO NOTHING",
            programme_id,
        )
        await conn.execute(
            "INSERT INTO benefit_grants (programme_id, member_id, benefit_id, reason) "
            "SELECT $1, m.id, b.id, 'bench' FROM members m "
            "JOIN benefits b ON b.programme_id = $1 AND b.code = 'returns' "
            "WHERE m.programme_id = $1 AND mod(abs(hashint8(m.id)::bigint), 10) = 0",
            programme_id,
        )
    finally:
        await conn.close()


# --- the nodes' share ---------------------------------------------------------------------------


async def _node_counters(topology: Topology) -> dict[str, dict[str, int]]:
    """Per node: the database's committed transactions, and ledger transactions in its shards."""
    if not topology.nodes:
        return {}
    counters: dict[str, dict[str, int]] = {}
    for node, url in topology.nodes.items():
        conn = await asyncpg.connect(url)
        try:
            commits = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        counters[node] = {"xact_commit": int(commits)}
    rows = _by_node(topology, await _rows_per_node(topology.url, ("transactions",)))
    for node, counts in rows.items():
        counters.setdefault(node, {})["ledger_transactions"] = counts["transactions"]
    return counters


def _by_node(topology: Topology, by_port: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The nodes' port numbers (as citus_shards names them) replaced by their names."""
    names = {urlsplit(url).port: node for node, url in topology.nodes.items()}
    return {names.get(int(port), port): counts for port, counts in by_port.items()}


def _deltas(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    deltas: dict[str, dict[str, Any]] = {}
    for node, values in after.items():
        deltas[node] = {key: value - before.get(node, {}).get(key, 0) for key, value in values.items()}
    for key in ("xact_commit", "ledger_transactions"):
        on_workers = sum(d.get(key, 0) for node, d in deltas.items() if node != "coordinator")
        for node, d in deltas.items():
            if node != "coordinator" and key in d:
                d[f"{key}_share_of_workers"] = round(d[key] / on_workers, 3) if on_workers else None
    return deltas


async def _rows_per_node(url: str, tables: Sequence[str] = SHARDED) -> dict[str, dict[str, int]]:
    """Rows of each member-scoped table in the shards each node holds (by port)."""
    conn = await asyncpg.connect(url)
    try:
        found: dict[str, dict[str, int]] = {}
        for table in tables:
            rows = await conn.fetch(
                "SELECT s.nodeport, sum(r.result::bigint) AS n "
                "FROM run_command_on_shards($1, 'SELECT count(*) FROM %s') r "
                "JOIN citus_shards s ON s.shardid = r.shardid GROUP BY s.nodeport ORDER BY s.nodeport",
                table,
            )
            for row in rows:
                found.setdefault(str(row["nodeport"]), {})[table] = int(row["n"])
    finally:
        await conn.close()
    return found


# --- the books ----------------------------------------------------------------------------------


async def _check_books(topology: Topology, settings: Settings) -> dict[str, Any]:
    from loyalty.ledger.verify import run_cli

    books: dict[str, Any] = dict(await consistency(topology.url, topology.programme_id))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = await run_cli(dataclasses.replace(settings, database_url=topology.url), "bench")
    lines = output.getvalue().strip().splitlines()
    books["ledger_verify"] = lines[-1] if lines else f"exit {code}"
    books["ledger_verify_rows"] = lines[1] if len(lines) > 1 else ""
    books["clean"] = (
        code == 0 and books["negative_members"] == 0 and books["unbalanced_transactions"] == 0
    )  # fmt: skip
    _say(f"  {books}")
    return books


# --- the report ---------------------------------------------------------------------------------


def _summary(topology: Topology) -> dict[str, Any]:
    return {
        "workloads": topology.results,
        "failed": topology.failures,
        "consistency": topology.consistency,
        "nodes": sorted(topology.nodes),
    }


def _ratios(topologies: dict[str, Any], names: list[str]) -> dict[str, dict[str, float | None]]:
    if not {"single", "citus"} <= set(topologies):
        return {}
    ratios: dict[str, dict[str, float | None]] = {}
    for name in names:
        single = topologies["single"]["workloads"].get(name)
        citus = topologies["citus"]["workloads"].get(name)
        if not single or not citus:
            ratios[name] = {"rate": None, "p50": None, "p99": None}
            continue
        ratios[name] = {
            "rate": _ratio(citus["rate"], single["rate"]),
            "p50": _ratio(citus["p50_ms"], single["p50_ms"]),
            "p99": _ratio(citus["p99_ms"], single["p99_ms"]),
        }
    return ratios


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def render(result: dict[str, Any]) -> str:
    topologies = result["topologies"]
    names = result["settings"]["workloads"]
    lines = [
        f"{result['settings']['clients']} clients, {result['settings']['duration_s']:g} s per workload; "
        f"load average {result['load_average']}",
        "",
        f"{'workload':<13}" + "".join(f"{t + ' /s':>12}{'p50':>7}{'p99':>7}" for t in topologies) + "  citus/single rate, p99",
    ]  # fmt: skip
    for name in names:
        line = f"{name:<13}"
        for topology in topologies.values():
            row = topology["workloads"].get(name)
            line += (
                f"{row['rate']:>12.0f}{row['p50_ms']:>7.1f}{row['p99_ms']:>7.1f}"
                if row
                else f"{'failed':>12}{'':>14}"
            )
        ratio = result.get("ratios", {}).get(name)
        if ratio and ratio["rate"] is not None:
            line += f"  {ratio['rate']:.0%}, {ratio['p99']:.2f}x"
        lines.append(line)
    lines.append("(rate in ops/s; p50 and p99 in ms; errors below)")
    for tname, topology in topologies.items():
        for name, row in topology["workloads"].items():
            if row["errors"]:
                lines.append(f"  {tname} {name}: {row['errors']} errors, statuses {row['statuses']}")
        for name, error in topology["failed"].items():
            lines.append(f"  {tname} {name} FAILED: {error}")
    citus = topologies.get("citus")
    if citus:
        lines += ["", "citus, per node: committed transactions (xact_commit) / ledger transactions written"]
        for name, row in citus["workloads"].items():
            nodes = row.get("nodes", {})
            parts = [
                f"{node} {d['xact_commit']}/{d.get('ledger_transactions', '-')}"
                + (
                    f" ({d['ledger_transactions_share_of_workers']:.0%})"
                    if d.get("ledger_transactions_share_of_workers") is not None
                    else ""
                )
                for node, d in nodes.items()
            ]
            lines.append(f"  {name:<13}" + ", ".join(parts))
        lines.append(f"  rows in the member shards per node at the end: {citus.get('rows_per_node')}")
    lines.append("")
    for tname, topology in topologies.items():
        lines.append(f"books, {tname}: {topology['consistency']}")
    return "\n".join(lines)


# --- helpers ------------------------------------------------------------------------------------


async def _flush_redis(settings: Settings) -> None:
    """The second topology's programme has the first one's ids: no cached configuration may leak."""
    assert settings.redis_url is not None
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def _version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    raise SystemExit(main())
