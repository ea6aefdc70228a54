"""The checkout benchmark: GET /v1/benefits/{code}/check driven open-loop at a fixed rate
(1,000 req/s) against 10,000 members with tier benefits, grants and a segment campaign, next
to the minimal Litestar endpoint (one primary-key SELECT) at the same rate in the same run;
then consume throughput (closed loop, at each client count). Target: checkout p99 <= 5 ms at
1000/s, the median of three runs.

    python -m bench.checkout [--rate 1000] [--duration 20] [--warmup 3] [--consume-clients 16,64]

Open loop: each request has a scheduled send time; latency is measured from that time, so a
server that falls behind is charged for the queueing it causes (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench import pgbench, profiling, stack
from bench.cpu import CpuProbe, CpuShare
from bench.httpload import ConnectionClosed, HttpConnection, connect, encode_request
from bench.report import cpu_ms_per_op, latency
from bench.workloads import CONSUME
from loyalty.settings import Settings

MEMBERS = 10_000
DATABASE = "loyalty_bench_checkout"
API_FACTORY = "loyalty.app:app_from_env"
MINIMAL_FACTORY = "bench.minimal_app:app_from_env"
TARGET_P99_MS = 5.0
RATE = 1000.0
# The check's p99 is the median of this many runs: one run's p99 rests on its 200 slowest answers.
CHECK_RUNS = 3
NAMES = {"en": "x", "zh-CN": "x"}
# Checked benefits: a tier flag, a quota from tier or grant, a campaign discount.
CHECKED = ("ship", "returns", "spring")


@dataclass
class Measured:
    name: str
    rate: float
    sent: int
    ok: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    extra: dict[str, Any] = field(default_factory=dict)
    clients: int | None = None  # connections (open loop: the pool) or closed loops
    cpu: CpuShare | None = None
    # ms of CPU per answered request: client, api, postgres, own (their sum), other
    cpu_ms_per_op: dict[str, float] = field(default_factory=dict)

    def add_cpu(self, cpu: CpuShare | None, duration: float) -> None:
        self.cpu = cpu
        if cpu is not None:
            self.cpu_ms_per_op = cpu_ms_per_op(cpu, self.ok / duration)


async def _probe_window(probe: CpuProbe | None, start_ns: int, end_ns: int) -> CpuShare | None:
    """The CPU used between two perf_counter_ns() instants (this task sleeps until each)."""
    if probe is None:
        return None
    await asyncio.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / 1e9))
    probe.start()
    await asyncio.sleep(max(0.0, (end_ns - time.perf_counter_ns()) / 1e9))
    return probe.stop()


async def open_loop(
    host: str,
    port: int,
    make: Callable[[int], bytes],
    *,
    rate: float,
    warmup: float,
    duration: float,
    pool: int = 64,
    ok_status: int = 200,
    probe: CpuProbe | None = None,
) -> Measured:
    """Requests at ``rate`` per second on up to ``pool`` keep-alive connections (a request
    waits for a free connection: its latency counts from when it was due)."""
    free: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(pool):
        free.put_nowait(await connect(host, port))
    samples: list[int] = []
    errors: dict[str, int] = {}
    ok = 0
    sent = 0
    start = time.perf_counter_ns() + 50_000_000
    window_start = start + int(warmup * 1e9)
    end = window_start + int(duration * 1e9)
    interval = int(1e9 / rate)
    tasks: set[asyncio.Task[None]] = set()
    cpu_task = asyncio.create_task(_probe_window(probe, window_start, end))

    async def one(i: int, scheduled: int) -> None:
        nonlocal ok
        conn = await free.get()
        try:
            status, _ = await conn.request(make(i))
        except (ConnectionClosed, ConnectionError):
            conn.close()
            conn = await connect(host, port)
            status = 0
        free.put_nowait(conn)
        done = time.perf_counter_ns()
        if scheduled >= window_start:
            samples.append(done - scheduled)
            if status == ok_status:
                ok += 1
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    i = 0
    while True:
        scheduled = start + i * interval
        if scheduled >= end:
            break
        delay = (scheduled - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if scheduled >= window_start:
            sent += 1
        i += 1
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    cpu = await cpu_task
    while not free.empty():
        free.get_nowait().close()
    lat = latency(samples)
    measured = Measured(
        "", rate, sent, ok, errors, lat.p50_ms, lat.p99_ms, max(samples, default=0) / 1e6, clients=pool
    )  # fmt: skip
    measured.add_cpu(cpu, duration)
    return measured


async def closed_loop(
    host: str,
    port: int,
    make: Callable[[int], bytes],
    *,
    clients: int,
    warmup: float,
    duration: float,
    probe: CpuProbe | None = None,
) -> Measured:
    counter = iter(range(10**9))
    samples: list[int] = []
    errors: dict[str, int] = {}
    ok = 0
    window_start = time.perf_counter_ns() + int(warmup * 1e9)
    end = window_start + int(duration * 1e9)
    cpu_task = asyncio.create_task(_probe_window(probe, window_start, end))

    async def loop() -> None:
        nonlocal ok
        conn = await connect(host, port)
        try:
            while (now := time.perf_counter_ns()) < end:
                status, _ = await conn.request(make(next(counter)))
                done = time.perf_counter_ns()
                if now >= window_start:
                    samples.append(done - now)
                    if status in (200, 201):
                        ok += 1
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1
        finally:
            conn.close()

    await asyncio.gather(*(loop() for _ in range(clients)))
    cpu = await cpu_task
    lat = latency(samples)
    measured = Measured(
        "", ok / duration, len(samples), ok, errors, lat.p50_ms, lat.p99_ms, max(samples, default=0) / 1e6,
        clients=clients,
    )  # fmt: skip
    measured.add_cpu(cpu, duration)
    return measured


# Set-up -------------------------------------------------------------------------------------


async def _database(url: str) -> str:
    conn = await asyncpg.connect(stack.with_database(url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    bench_url = stack.with_database(url, DATABASE)
    await asyncio.to_thread(stack.upgrade, bench_url)
    return bench_url


def _call(port: int, key: str, method: str, path: str, body: Any) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Idempotency-Key": path,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def setup_catalogue(port: int, key: str) -> None:
    now = datetime.now(UTC)
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/v1/benefits", {"code": "ship", "type": "flag", "names": NAMES}),
        ("POST", "/v1/benefits", {"code": "lounge", "type": "flag", "names": NAMES, "channels": ["app"]}),
        (
            "POST",
            "/v1/benefits",
            {"code": "returns", "type": "quota", "names": NAMES, "params": {"limit": 3, "period": "month"}},
        ),
        (
            "POST",
            "/v1/benefits",
            {"code": "spring", "type": "discount", "names": NAMES, "params": {"percent": 10, "cap": 5000}},
        ),
        (
            "POST",
            "/v1/benefits",
            {
                "code": "bench-consume",
                "type": "quota",
                "names": NAMES,
                "params": {"limit": 10**9, "period": "year"},
            },
        ),
        ("PUT", "/v1/tier-benefits/silver", {"benefits": [{"benefit": "ship"}, {"benefit": "returns"}]}),
        (
            "PUT",
            "/v1/tier-benefits/gold",
            {
                "benefits": [
                    {"benefit": "ship"},
                    {"benefit": "lounge"},
                    {"benefit": "returns", "params": {"limit": 10}},
                    {"benefit": "bench-consume"},
                ]
            },
        ),
        (
            "POST",
            "/v1/segments",
            {"code": "vip-city", "rule": {"fact": "attributes.city", "op": "==", "value": "sh"}},
        ),
        (
            "POST",
            "/v1/benefit-campaigns",
            {
                "code": "spring-sh",
                "segment": "vip-city",
                "benefit": "spring",
                "starts_at": (now - timedelta(days=1)).isoformat(),
                "ends_at": (now + timedelta(days=30)).isoformat(),
            },
        ),
    ]
    for method, path, body in calls:
        status, text = _call(port, key, method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {text}")


async def _seed_members(url: str, programme_id: int) -> None:
    """10,000 members: a third silver, a third gold, a fifth in the campaign's city, a tenth with
    an individual grant of the returns quota."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "SELECT ledger_open_member($1, 'm' || i, CASE WHEN i % 5 = 0 THEN '{\"city\": \"sh\"}' ELSE '{}' END::jsonb) "
            "FROM generate_series(1, $2::int) i",
            programme_id,
            MEMBERS,
        )
        await conn.execute(
            "INSERT INTO member_tiers (programme_id, member_id, tier, ladder_version) "
            "SELECT $1, id, CASE WHEN id % 3 = 0 THEN 'gold' WHEN id % 3 = 1 THEN 'silver' ELSE 'bronze' END, 1 "
            "FROM members WHERE programme_id = $1",
            programme_id,
        )
        await conn.execute(
            "INSERT INTO benefit_grants (programme_id, member_id, benefit_id, reason) "
            "SELECT $1, m.id, b.id, 'bench' FROM members m JOIN benefits b ON b.programme_id = $1 AND b.code = 'returns' "
            "WHERE m.programme_id = $1 AND m.id % 10 = 0",
            programme_id,
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def _seed(url: str) -> tuple[int, dict[str, str]]:
    from loyalty.auth.service import create_api_key
    from loyalty.db import create_engine
    from loyalty.programmes.service import create_programme

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            programme_id = await create_programme(conn, code="bench", name="bench")
            keys = {}
            for role in ("operator", "ecommerce"):
                _, keys[role] = await create_api_key(conn, programme_id=programme_id, role=role, name="bench")
    finally:
        await engine.dispose()
    return programme_id, keys


# Run ---------------------------------------------------------------------------------------


def check_request(port: int, key: str) -> Callable[[int], bytes]:
    heads = {
        code: encode_request(
            "GET",
            f"/v1/benefits/{code}/check?member_id=@@",
            {"Host": f"127.0.0.1:{port}", "Authorization": f"Bearer {key}"},
        ).split(b"@@")
        for code in CHECKED
    }
    randint = random.randint

    def make(i: int) -> bytes:
        before, after = heads[CHECKED[i % len(CHECKED)]]
        return before + b"m%d" % randint(1, MEMBERS) + after

    return make


def _minimal_request(port: int) -> Callable[[int], bytes]:
    before, after = encode_request("GET", "/accounts/@@", {"Host": f"127.0.0.1:{port}"}).split(b"@@")
    randint = random.randint

    def make(_: int) -> bytes:
        return before + str(1000 + randint(1, MEMBERS)).encode() + after

    return make


def _consume_request(port: int, key: str, gold: list[int]) -> Callable[[int], bytes]:
    head = (
        f"POST /v1/benefits/bench-consume/consume HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: "
    ).encode()
    prefix = f"{random.getrandbits(32):x}"
    choice = random.choice

    def make(i: int) -> bytes:
        body = f'{{"member_id":"m{choice(gold)}","order_reference":"{prefix}-{i}"}}'.encode()
        return head + str(len(body)).encode() + b"\r\n\r\n" + body

    return make


async def run(
    *,
    rate: float,
    duration: float,
    warmup: float,
    consume_clients: Sequence[int],
    data_dir: Path,
    pool_size: int = 16,
    settings: Settings | None = None,
    check_runs: int = CHECK_RUNS,
    postmaster: int | None = None,
    profile: Path | None = None,
    profiles: list[dict[str, Any]] | None = None,
) -> list[Measured]:
    """The whole benchmark on its own database; ``settings`` with server URLs if the caller
    already has them (bench/cli.py), else the configured or embedded servers. With ``profile``
    (a file), consume runs once more at the last client count under py-spy, and its summary is
    appended to ``profiles``."""
    options = Options(
        rate=rate, duration=duration, warmup=warmup, consume_clients=list(consume_clients),
        pool_size=pool_size, check_runs=check_runs, postmaster=postmaster, profile=profile,
    )  # fmt: skip
    if settings is not None:
        return await _run(settings, options, profiles)
    with stack.servers(data_dir) as resolved:
        return await _run(resolved, options, profiles)


@dataclass
class Options:
    rate: float
    duration: float
    warmup: float
    consume_clients: list[int]
    pool_size: int
    check_runs: int
    postmaster: int | None
    profile: Path | None


async def _run(settings: Settings, o: Options, profiles: list[dict[str, Any]] | None) -> list[Measured]:
    assert settings.database_url is not None
    url = await _database(settings.database_url)
    programme_id, keys = await _seed(url)
    await pgbench.create_raw_schema(url)
    env = stack.api_env(settings, url, o.pool_size)
    results: list[Measured] = []
    with stack.Granian(MINIMAL_FACTORY, env, workers=2) as server:
        server.start("/accounts/1001")
        assert server.process is not None
        minimal = await open_loop(
            server.host, server.port, _minimal_request(server.port), rate=o.rate, warmup=o.warmup,
            duration=o.duration, probe=CpuProbe(api_pid=server.process.pid, postmaster_pid=o.postmaster),
        )  # fmt: skip
        minimal.name = "minimal-select"
        results.append(minimal)
    with stack.Granian(API_FACTORY, env, workers=2) as server:
        server.start("/health/ready")
        assert server.process is not None
        await asyncio.to_thread(setup_catalogue, server.port, keys["operator"])
        await _seed_members(url, programme_id)
        probe = CpuProbe(api_pid=server.process.pid, postmaster_pid=o.postmaster)
        for run in range(o.check_runs):
            check = await open_loop(
                server.host, server.port, check_request(server.port, keys["ecommerce"]), rate=o.rate,
                # The first run warms the server up; the next ones follow on a warm server.
                warmup=o.warmup if run == 0 else min(o.warmup, 1.0), duration=o.duration, probe=probe,
            )  # fmt: skip
            check.name = "checkout-check"
            check.extra["run"] = run + 1
            check.extra["ratio_p99_to_minimal"] = (
                round(check.p99_ms / minimal.p99_ms, 2) if minimal.p99_ms else None
            )
            results.append(check)
    if not o.consume_clients:
        return results
    # Consume on a server whose pools fit the most clients (see bench.cli's --pool-size).
    consume_env = stack.api_env(settings, url, max(o.pool_size, *o.consume_clients))
    gold = [i for i in range(1, MEMBERS + 1) if i % 3 == 0]
    with stack.Granian(API_FACTORY, consume_env, workers=2) as server:
        server.start("/health/ready")
        assert server.process is not None
        probe = CpuProbe(api_pid=server.process.pid, postmaster_pid=o.postmaster)
        for clients in o.consume_clients:
            consume = await closed_loop(
                server.host, server.port, _consume_request(server.port, keys["ecommerce"], gold),
                clients=clients, warmup=o.warmup, duration=o.duration, probe=probe,
            )  # fmt: skip
            consume.name = CONSUME
            results.append(consume)
        if o.profile is not None:
            clients = o.consume_clients[-1]
            profiler = profiling.Profiler(server.process.pid, o.profile)
            await profiler.start()
            try:
                profiled = await closed_loop(
                    server.host, server.port, _consume_request(server.port, keys["ecommerce"], gold),
                    clients=clients, warmup=0.0, duration=o.duration,
                )  # fmt: skip
            finally:
                await profiler.stop()
            summary = profiling.summarize(o.profile)
            if profiles is not None:
                profiles.append(
                    {"workload": CONSUME, "clients": clients, "file": str(o.profile),
                     "rate_under_profiler": profiled.rate, **asdict(summary)}
                )  # fmt: skip
    return results


def check_p99(results: Sequence[Measured]) -> tuple[float, list[float]] | None:
    """The checkout check's p99: the median of its runs' p99s, and those p99s."""
    p99s = [r.p99_ms for r in results if r.name == "checkout-check"]
    return (statistics.median(p99s), p99s) if p99s else None


def render(results: Sequence[Measured]) -> str:
    lines = [
        f"{'workload':<24}{'clients':>8}{'req/s':>9}{'ok':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'cpu ms/op':>11}  errors"
    ]
    for r in results:
        name = r.name + (f" #{r.extra['run']}" if "run" in r.extra else "")
        cpu = f"{r.cpu_ms_per_op['own']:>11.2f}" if r.cpu_ms_per_op else " " * 11
        lines.append(
            f"{name:<24}{r.clients or '':>8}{r.rate:>9.0f}{r.ok:>8}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.max_ms:>9.1f}"
            f"{cpu}  {r.errors or '-'}"
        )
    p99 = check_p99(results)
    if p99 is not None:
        median, runs = p99
        checks = [r for r in results if r.name == "checkout-check"]
        failed = sum(sum(r.errors.values()) for r in checks)
        passed = median <= TARGET_P99_MS and not failed
        lines.append(
            f"verdict: checkout p99 <= {TARGET_P99_MS:g} ms at {checks[0].rate:.0f}/s "
            f"(median of {len(runs)}): {'pass' if passed else 'fail'} "
            f"(p99 {median:.2f} ms; runs {', '.join(f'{x:.2f}' for x in runs)})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checkout", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--consume-clients", default="16,64", help="closed loops of consume, comma-separated")
    parser.add_argument("--check-runs", type=int, default=CHECK_RUNS, help="check runs; p99 is their median")
    parser.add_argument("--data-dir", type=Path, default=Path(".loyalty/bench"))
    args = parser.parse_args(argv)
    results = asyncio.run(
        run(
            rate=args.rate,
            duration=args.duration,
            warmup=args.warmup,
            consume_clients=[int(n) for n in args.consume_clients.split(",") if n.strip()],
            data_dir=args.data_dir,
            check_runs=args.check_runs,
        )
    )
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
