"""The benchmark's own logic: the targets and their verdicts, CPU per op, the profile summary and
the bare-stack reference apps. The timings themselves are not tested (they are the benchmark)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from bench.bare_app import BareApp
from bench.cpu import CpuShare
from bench.profiling import NATIVE, package, summarize
from bench.report import BaselineRow, HttpRow, Latency, Report, cpu_ms_per_op, evaluate, render

pytestmark = pytest.mark.asyncio


def _row(workload: str, clients: int, rate: float, *, api: float, pg: float, p99: float = 10.0) -> HttpRow:
    cpu = CpuShare(total=2.0, client=0.1, api=api, postgres=pg, other=2.0 - 0.1 - api - pg)
    return HttpRow(
        workload=workload,
        clients=clients,
        ops_per_s=rate,
        units_per_s=rate,
        latency={"step": Latency(1.0, 2.0, p99, 1.0, 100)},
        statuses={"200": 100},
        cpu=cpu,
        cpu_ms_per_op=cpu_ms_per_op(cpu, rate),
    )


def _report() -> Report:
    report = Report(machine={"nproc": 2}, settings={}, started_at="")
    for n in (16, 64):
        report.http += [
            _row("minimal-select", n, 4000, api=1.4, pg=0.4),
            _row("earn-spread", n, 4100 if n == 64 else 3000, api=0.8, pg=1.0, p99=19.0),
            _row("earn-hot", n, 2000, api=0.8, pg=1.0, p99=25.0),
            _row("events", n, 1000, api=0.8, pg=1.1),
            _row("hold+capture", n, 1700, api=0.7, pg=1.2),
        ]
    report.checkout = [
        {"name": "minimal-select", "clients": 64, "rate": 1000.0, "p99_ms": 20.0, "sent": 10, "ok": 10},
        *(
            {"name": "checkout-check", "clients": 64, "rate": 1000.0, "p99_ms": p99, "sent": 10, "ok": 10}
            for p99 in (9.0, 3.0, 4.5)
        ),
        {
            "name": "consume",
            "clients": 64,
            "rate": 2100.0,
            "errors": {},
            "cpu": {"total": 2.0},
            "cpu_ms_per_op": {"client": 0.05, "api": 0.4, "postgres": 0.5, "own": 0.95, "other": 0.0},
        },
    ]
    report.events_open = [
        {
            "clients": 64,
            "share": 0.5,
            "rate": 500.0,
            "p50_ms": 9.0,
            "p99_ms": 31.0,
            "max_ms": 40.0,
            "sent": 10,
            "ok": 10,
        }
    ]
    return report


def _checks(report: Report) -> dict[tuple[str, int | None], Any]:
    evaluate(report, [16, 64])
    return {(c.name, c.clients): c for c in report.checks}


async def test_shares_of_minimal_select_have_a_verdict_at_64_clients_only() -> None:
    checks = _checks(_report())
    spread = checks[("earn-spread / minimal-select", 64)]
    assert spread.value == pytest.approx(4100 / 4000)
    assert (spread.target, spread.passed) == (">= 100%", True)
    assert checks[("earn-hot / minimal-select", 64)].passed is False  # 50% < 100%
    assert checks[("events / minimal-select", 64)].passed is False  # 25% < 40%
    assert checks[("hold+capture / minimal-select", 64)].passed is True  # 42.5% >= 40%
    consume = checks[("consume / minimal-select", 64)]
    assert consume.value == pytest.approx(2100 / 4000) and consume.passed is True
    # At 16 clients the same ratio is informative.
    at_16 = checks[("earn-spread / minimal-select", 16)]
    assert (at_16.value, at_16.target, at_16.passed) == (pytest.approx(0.75), "", None)


async def test_a_share_carries_its_cpu_bound_ceiling() -> None:
    check = _checks(_report())[("events / minimal-select", 64)]
    # Own CPU per op: (client + api + pg) cores / rate.
    reference, events = (0.1 + 1.4 + 0.4) / 4000 * 1000, (0.1 + 0.8 + 1.1) / 1000 * 1000
    assert check.ceiling == pytest.approx(reference / events)
    assert "CPU/op 2.00 ms" in check.evidence and "ceiling 24%" in check.evidence


async def test_latency_targets() -> None:
    checks = _checks(_report())
    assert checks[("earn-spread p99 ms", 16)].passed is True
    assert checks[("earn-hot p99 ms", 16)].passed is False
    assert ("earn-spread p99 ms", 64) not in checks  # the p99 target is at 16 clients
    # Open loop at half the closed-loop rate: 31 ms > 30 ms.
    assert checks[("events p99 ms, open loop at 50% (500/s)", 64)].passed is False
    # The closed-loop events p99 is queueing, not a target any more.
    assert not [name for name, _ in checks if "closed loop" in name]
    # The checkout check: the median of 9.0, 3.0 and 4.5 ms, not their worst or their mean.
    check = checks[("checkout-check p99 ms at 1000/s, median of 3", None)]
    assert (check.value, check.passed) == (4.5, True)
    assert "9.00, 3.00, 4.50" in check.evidence


async def test_the_printout_gives_each_target_its_verdict_and_a_failure_its_measurement() -> None:
    report = _report()
    report.machine.update(cpu_model="x", memory_gb=1, postgresql="18", python="3.11")
    evaluate(report, [16, 64])
    lines = render(report).splitlines()
    events = next(
        i for i, line in enumerate(lines) if line.startswith("events / minimal-select") and " 64 " in line
    )
    assert lines[events].endswith("FAIL")
    assert lines[events + 1].strip().startswith("why: CPU/op 2.00 ms")
    spread = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("earn-spread / minimal-select") and " 64 " in line
    )
    assert lines[spread].endswith("pass")
    # The share targets come before the other targets.
    assert spread < next(i for i, line in enumerate(lines) if line.startswith("earn-hot / earn-spread"))
    passed = sum(1 for c in report.checks if c.passed)
    assert f"{passed} of {sum(1 for c in report.checks if c.passed is not None)} targets met" in lines


async def test_the_raw_sql_ratio_is_informative_now() -> None:
    report = _report()
    report.baselines = []

    report.baselines.append(BaselineRow("raw earn-spread", 64, 8000.0, 1, 1, 1, 1, 1, 0))
    check = _checks(report)[("earn-spread / raw earn-spread", 64)]
    assert (check.value, check.passed, check.target) == (pytest.approx(4100 / 8000), None, "")


async def test_cpu_ms_per_op() -> None:
    cpu = CpuShare(total=1.9, client=0.2, api=0.8, postgres=0.6, other=0.3)
    per = cpu_ms_per_op(cpu, 2000.0)
    assert per == pytest.approx({"client": 0.1, "api": 0.4, "postgres": 0.3, "own": 0.8, "other": 0.15})
    assert cpu_ms_per_op(cpu, 0.0) == {}


def _speedscope(tmp_path: Path) -> Path:
    site = "/v/lib/python3.11/site-packages"
    frames = [
        {"name": 'process 1:"granian"', "file": "", "line": 0},
        {"name": "serve", "file": f"{site}/granian/server/mp.py", "line": 1},
        {"name": "PostingLane.__call__", "file": "/w/src/loyalty/web.py", "line": 2},
        {"name": "Connection.fetchrow", "file": f"{site}/asyncpg/connection.py", "line": 3},
    ]
    profile = {
        "type": "sampled",
        "unit": "seconds",
        # 2 in asyncpg under the lane, 1 in the lane, 1 in granian, 1 with no Python frame at all
        "samples": [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2], [0, 1], [0]],
        "weights": [0.01] * 5,
    }
    path = tmp_path / "p.speedscope.json"
    path.write_text(json.dumps({"shared": {"frames": frames}, "profiles": [profile]}))
    return path


async def test_profile_summary(tmp_path: Path) -> None:
    summary = summarize(_speedscope(tmp_path))
    assert summary.samples == 5
    assert summary.by_package == pytest.approx(
        {"asyncpg": 0.4, "loyalty": 0.2, "granian": 0.2, "native": 0.2}
    )
    top_self = dict(summary.top_self)
    assert top_self["Connection.fetchrow (asyncpg/connection.py)"] == pytest.approx(0.4)
    assert top_self[NATIVE] == pytest.approx(0.2)
    # Total time: the lane was on the stack of 3 samples; the server's own frames are left out.
    top_total = dict(summary.top_total)
    assert top_total["PostingLane.__call__ (loyalty/web.py)"] == pytest.approx(0.6)
    assert not [name for name in top_total if "granian" in name]


async def test_package_of_a_frame() -> None:
    assert package("/x/.venv/lib/python3.11/site-packages/litestar/app.py") == "litestar"
    assert package("/x/src/loyalty/ledger/service.py") == "loyalty"
    assert package("/py/lib/python3.11/asyncio/events.py") == "stdlib asyncio"
    assert package("/py/lib/python3.11/json/decoder.py") == "stdlib"


async def _call(app: BareApp, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path}, receive, send)
    start, body = sent
    headers = dict(start["headers"])
    assert int(headers[b"content-length"]) == len(body["body"])
    return start["status"], body["body"]


async def test_bare_http_answers_without_a_database() -> None:
    app = BareApp(None)
    await app.startup()
    assert app.pool is None
    assert await _call(app, "/accounts/1042") == (200, b'{"id":1042,"balance":null}')
    assert (await _call(app, "/accounts/x"))[0] == 404
    assert (await _call(app, "/other"))[0] == 404


async def test_bare_select_reads_the_row_through_a_plain_pool(database_url: str) -> None:
    from loyalty.db import plain_url

    schema = f"bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(
            f"CREATE TABLE {schema}.raw_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)"
        )
        await conn.execute(f"INSERT INTO {schema}.raw_accounts VALUES (1001, 77)")
        separator = "&" if "?" in database_url else "?"
        app = BareApp(f"{database_url}{separator}search_path={schema}", pool_size=1)
        await app.startup()
        try:
            assert await _call(app, "/accounts/1001") == (200, b'{"id":1001,"balance":77}')
            assert await _call(app, "/accounts/1002") == (200, b'{"id":1002,"balance":null}')
        finally:
            await app.shutdown()
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
