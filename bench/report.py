"""Results, ratios against the raw baselines, targets, the printed table and latest.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import CpuShare
from bench.httpload import LoadResult
from bench.profiling import Summary
from bench.profiling import render as render_profile
from bench.workloads import CONSUME, HTTP_WORKLOADS, REFERENCES

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "latest.json"
# Statuses that are an answer of the ledger, not a failure of the service.
BUSINESS_STATUS = "422"


# Marks the rows of the second API run, with LOYALTY_METRICS_ENABLED=false.
OBSERVABILITY_OFF = " (obs. off)"

# The throughput targets: each workload's rate as a share of the minimal-select
# endpoint's (one primary-key SELECT through Litestar, bench/minimal_app.py), both measured in
# the same run at TARGET_CLIENTS.
REFERENCE = "minimal-select"
TARGET_CLIENTS = 64
SHARE_TARGETS: dict[str, float] = {
    "earn-spread": 1.00,
    "earn-hot": 1.00,
    "events": 0.40,
    "hold+capture": 0.40,
    CONSUME: 0.50,
}
EARN_P99_MS = 20.0  # at 16 clients
EVENTS_OPEN_P99_MS = 30.0  # open loop at half the closed loop's rate
CHECK_P99_MS = 5.0  # the checkout check at 1,000/s, median of 3 runs


def cpu_ms_per_op(cpu: CpuShare, ops_per_s: float) -> dict[str, float]:
    """CPU per operation by process, in ms: cores busy / operations per second. ``own`` is what
    this run spent (client + api + postgres); ``other`` is the rest of the machine."""
    if ops_per_s <= 0:
        return {}
    per = 1000.0 / ops_per_s
    return {
        "client": cpu.client * per,
        "api": cpu.api * per,
        "postgres": cpu.postgres * per,
        "own": (cpu.client + cpu.api + cpu.postgres) * per,
        "other": cpu.other * per,
    }


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    count: int


def latency(samples_ns: list[int]) -> Latency:
    if not samples_ns:
        return Latency(0.0, 0.0, 0.0, 0.0, 0)
    ordered = sorted(samples_ns)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return Latency(pct(0.50), pct(0.90), pct(0.99), sum(ordered) / len(ordered) / 1e6, len(ordered))


@dataclass
class HttpRow:
    workload: str
    clients: int
    ops_per_s: float = 0.0
    units_per_s: float = 0.0
    unit: str = "ops"
    latency: dict[str, Latency] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    business_422: int = 0
    cpu: CpuShare | None = None
    skipped: str | None = None
    # ms of CPU per operation (a pair for hold+capture, a request for batch-earn), by process
    cpu_ms_per_op: dict[str, float] = field(default_factory=dict)

    @property
    def main_latency(self) -> Latency:
        # The pair's first step for hold+capture; the only step elsewhere.
        return next(iter(self.latency.values()), Latency(0.0, 0.0, 0.0, 0.0, 0))


_STEP_ORDER = ["select", "earn", "spend", "hold", "capture", "batch", "event"]


def http_row(workload: str, clients: int, result: LoadResult, *, units_per_op: int, unit: str) -> HttpRow:
    errors = sum(n for status, n in result.statuses.items() if not status.startswith("2") and status != "422")
    return HttpRow(
        workload=workload,
        clients=clients,
        ops_per_s=result.ops / result.seconds,
        units_per_s=result.ops * units_per_op / result.seconds,
        unit=unit,
        # Steps in request order (hold before capture), whichever completed first in the window.
        latency={
            step: latency(result.latencies[step]) for step in sorted(result.latencies, key=_STEP_ORDER.index)
        },
        statuses=result.statuses,
        errors=errors,
        business_422=result.statuses.get(BUSINESS_STATUS, 0),
        cpu=result.cpu,
        cpu_ms_per_op=cpu_ms_per_op(result.cpu, result.ops / result.seconds),
    )


@dataclass
class BaselineRow:
    name: str
    clients: int
    tps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    latency_avg_ms: float
    transactions: int
    failed: int
    cpu: CpuShare | None = None


@dataclass
class Check:
    name: str
    clients: int | None
    value: float
    target: str
    passed: bool | None  # None: informative ratio, no target
    unit: str = "ratio"  # ratio | rate | ms | count
    # For a share of the reference: the share the two would reach if both were bound by this
    # machine's CPU alone, at their measured CPU per op (reference's ms / this workload's ms).
    ceiling: float | None = None
    # The measurements behind the verdict (CPU per op, the runs a median was taken of).
    evidence: str = ""

    def shown(self) -> str:
        if self.unit == "ratio":
            return f"{self.value:.0%}"
        if self.unit == "ms":
            return f"{self.value:.2f}"
        if self.unit == "s":
            return f"{self.value:.1f}"
        return f"{self.value:.0f}"


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    started_at: str
    finished_at: str = ""
    http: list[HttpRow] = field(default_factory=list)
    baselines: list[BaselineRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    consistency: dict[str, Any] = field(default_factory=dict)
    # bench/tiers.py: members, changed, seconds, seed_seconds, members_per_s, by_tier
    tier_reeval: dict[str, Any] = field(default_factory=dict)
    # bench/checkout.py: the checkout check (open loop), the minimal endpoint, consume
    checkout: list[dict[str, Any]] = field(default_factory=list)
    checkout_text: str = ""
    # events driven open loop below the closed loop's rate (bench.checkout.Measured + clients, share)
    events_open: list[dict[str, Any]] = field(default_factory=list)
    # --profile: py-spy summaries (bench.profiling.Summary + workload, clients, file)
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def http_rate(self, workload: str, clients: int) -> float | None:
        for row in self.http:
            if row.workload == workload and row.clients == clients and row.skipped is None:
                return row.units_per_s
        return None

    def measured(self, workload: str, clients: int) -> tuple[float, dict[str, float], float] | None:
        """A closed-loop workload's rate, CPU ms per op and cores busy: the HTTP rows, and
        consume from the checkout benchmark."""
        for row in self.http:
            if row.workload == workload and row.clients == clients and row.skipped is None:
                return row.units_per_s, row.cpu_ms_per_op, row.cpu.total if row.cpu else 0.0
        for m in self.checkout:
            if m["name"] == workload and m.get("clients") == clients:
                return m["rate"], m.get("cpu_ms_per_op") or {}, (m.get("cpu") or {}).get("total", 0.0)
        return None

    def baseline_rate(self, name: str, clients: int) -> float | None:
        for row in self.baselines:
            if row.name == name and row.clients == clients:
                return row.tps
        return None


def machine_info(postgres_version: str) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(_mem_total_kb() / 1024 / 1024, 1),
        "postgresql": postgres_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- targets ------------------------------------------------------------------------------------


def evaluate(report: Report, clients: list[int]) -> None:
    """The targets (pass/fail) and the informative ratios (no verdict), per client count."""
    checks: list[Check] = []
    cores = report.machine.get("nproc") or 2
    for n in clients:
        checks += _shares(report, n, cores)
        spread = report.http_rate("earn-spread", n)
        hot = report.http_rate("earn-hot", n)
        pairs = [
            # A hot budget must not be a bottleneck: its shards spread the lock.
            ("earn-hot / earn-spread (HTTP)", hot, spread, 0.9),
            # The bare-stack ceiling: what HTTP alone, one SELECT and the framework cost.
            ("bare-select / bare-http", report.http_rate("bare-select", n), report.http_rate("bare-http", n), None),
            ("minimal-select / bare-select", report.http_rate("minimal-select", n),
             report.http_rate("bare-select", n), None),
            # Against pgbench: the same operation as plain SQL, and the engine called directly.
            ("earn-spread / raw earn-spread", spread, report.baseline_rate("raw earn-spread", n), None),
            ("earn-hot / raw earn-hot", hot, report.baseline_rate("raw earn-hot", n), None),
            ("spend / raw spend", report.http_rate("spend", n), report.baseline_rate("raw spend", n), None),
            ("earn-spread / engine earn-spread", spread, report.baseline_rate("engine earn-spread", n), None),
            ("engine earn-spread / raw earn-spread", report.baseline_rate("engine earn-spread", n),
             report.baseline_rate("raw earn-spread", n), None),
        ]  # fmt: skip
        for name, numerator, denominator, minimum in pairs:
            if numerator is None or not denominator:
                continue
            ratio = numerator / denominator
            target = f">= {minimum:.0%}" if minimum is not None else ""
            checks.append(Check(name, n, ratio, target, None if minimum is None else ratio >= minimum))
        # What metrics and request ids cost: the rate with them on over the rate with them off.
        for workload in HTTP_WORKLOADS:
            on, off = report.http_rate(workload, n), report.http_rate(workload + OBSERVABILITY_OFF, n)
            if on is not None and off:
                ratio = on / off
                checks.append(Check(f"{workload}: observability on / off", n, ratio, ">= 95%", ratio >= 0.95))
    checks += _latencies_and_errors(report)
    reeval = report.tier_reeval
    if reeval.get("members"):
        rate = reeval["members_per_s"]
        # The target is a million members in 60 s; a smaller (--quick) run is projected.
        projected = 1_000_000 / rate if rate else float("inf")
        label = "tier-reeval 1M members s" + ("" if reeval["members"] >= 1_000_000 else " (projected)")
        checks.append(Check(label, None, projected, "<= 60 s", projected <= 60, "s"))
        checks.append(Check("tier-reeval members/s", None, rate, "", None, "rate"))
    report.checks = checks


def _shares(report: Report, n: int, cores: int) -> list[Check]:
    """Each target workload's rate over the reference's; a verdict at TARGET_CLIENTS only.

    The evidence is CPU per op: on a machine whose cores are all busy (client, API and
    PostgreSQL share them), rates are in the inverse ratio of CPU per op, so the reference's
    CPU/op over the workload's is the share this machine allows before any waiting is counted.
    """
    reference = report.measured(REFERENCE, n)
    if reference is None or not reference[0]:
        return []
    ref_rate, ref_cpu, _ = reference
    checks = []
    for workload, minimum in SHARE_TARGETS.items():
        measured = report.measured(workload, n)
        if measured is None:
            continue
        rate, cpu, _ = measured
        ratio = rate / ref_rate
        verdict = n == TARGET_CLIENTS
        ceiling = None
        evidence = ""
        if cpu.get("own") and ref_cpu.get("own"):
            ceiling = ref_cpu["own"] / cpu["own"]
            # The cores each run got: far apart, the share says more about the machine's other
            # load during one of the two runs than about the workload.
            own, ref_own = cpu["own"] * rate / 1000, ref_cpu["own"] * ref_rate / 1000
            evidence = (
                f"CPU/op {cpu['own']:.2f} ms (api {cpu['api']:.2f}, pg {cpu['postgres']:.2f}, client "
                f"{cpu['client']:.2f}) vs {REFERENCE} {ref_cpu['own']:.2f} ms (api {ref_cpu['api']:.2f}, "
                f"pg {ref_cpu['postgres']:.2f}): CPU-bound ceiling {ceiling:.0%}; the runs had "
                f"{own:.2f} and {ref_own:.2f} of {cores} cores"
            )
        checks.append(
            Check(
                f"{workload} / {REFERENCE}",
                n,
                ratio,
                f">= {minimum:.0%}" if verdict else "",
                ratio >= minimum if verdict else None,
                ceiling=ceiling,
                evidence=evidence,
            )
        )
    return checks


def _latencies_and_errors(report: Report) -> list[Check]:
    checks: list[Check] = []
    for row in report.http:
        if row.skipped is not None:
            continue
        if row.workload == "batch-earn":
            rate = row.units_per_s
            checks.append(
                Check("batch-earn points-transfers/s", row.clients, rate, ">= 20000", rate >= 20_000, "rate")
            )
        if row.workload in ("earn-spread", "earn-hot", "events"):
            if row.workload != "events" and row.clients == 16:
                p99 = row.main_latency.p99_ms
                target = f"<= {EARN_P99_MS:g} ms"
                checks.append(Check(f"{row.workload} p99 ms", 16, p99, target, p99 <= EARN_P99_MS, "ms"))
            errors = Check(f"{row.workload} errors", row.clients, row.errors, "= 0", row.errors == 0, "count")
            checks.append(errors)
    for fixed in report.events_open:
        name = f"events p99 ms, open loop at {fixed['share']:.0%} ({fixed['rate']:.0f}/s)"
        p99 = fixed["p99_ms"]
        checks.append(
            Check(
                name, fixed["clients"], p99, f"<= {EVENTS_OPEN_P99_MS:g} ms", p99 <= EVENTS_OPEN_P99_MS, "ms"
            )
        )
        failed = fixed["sent"] - fixed["ok"]
        checks.append(Check("events open-loop errors", fixed["clients"], failed, "= 0", failed == 0, "count"))
    runs = [m for m in report.checkout if m["name"] == "checkout-check"]
    if runs:
        p99s = [m["p99_ms"] for m in runs]
        median = statistics.median(p99s)
        rate = runs[0]["rate"]
        minimal = next((m for m in report.checkout if m["name"] == REFERENCE), None)
        evidence = "p99 of the runs: " + ", ".join(f"{p99:.2f}" for p99 in p99s) + " ms"
        if minimal is not None:
            evidence += f"; {REFERENCE} at the same rate: p99 {minimal['p99_ms']:.2f} ms"
        checks.append(
            Check(
                f"checkout-check p99 ms at {rate:.0f}/s, median of {len(runs)}",
                None,
                median,
                f"<= {CHECK_P99_MS:g} ms",
                median <= CHECK_P99_MS,
                "ms",
                evidence=evidence,
            )
        )
        failed = sum(m["sent"] - m["ok"] for m in runs)
        checks.append(Check("checkout-check errors", None, failed, "= 0", failed == 0, "count"))
    for m in report.checkout:
        if m["name"] == CONSUME:
            failed = sum(m["errors"].values())
            checks.append(Check("consume errors", m["clients"], failed, "= 0", failed == 0, "count"))
    return checks


# --- output -------------------------------------------------------------------------------------


def _verdict(passed: bool | None) -> str:
    return "" if passed is None else ("pass" if passed else "FAIL")


def _cpu(cpu: CpuShare | None) -> str:
    if cpu is None:
        return ""
    return f"{cpu.total:.2f} = {cpu.client:.2f} + {cpu.api:.2f} + {cpu.postgres:.2f} + {cpu.other:.2f}"


_ORDER = {name: i for i, name in enumerate((*REFERENCES, *HTTP_WORKLOADS))}


def _place(row: HttpRow) -> tuple[int, int, bool]:
    base = row.workload.removesuffix(OBSERVABILITY_OFF)
    return _ORDER.get(base, 99), row.clients, base != row.workload


def render(report: Report) -> str:
    m = report.machine
    cores = m.get("nproc") or 2
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gb']} GB, "
        f"PostgreSQL {m['postgresql']}, Python {m['python']}",
        "",
        f"{'workload':<28}{'clients':>8}{'rate/s':>11}  {'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"  {'errors':<16} cores busy = client + api + pg + other",
    ]
    rows = sorted(report.http, key=_place)
    for row in rows:
        if row.skipped:
            lines.append(f"{row.workload:<28}{row.clients:>8}  skipped: {row.skipped}")
            continue
        for i, (step, lat) in enumerate(row.latency.items()):
            label = row.workload if len(row.latency) == 1 else f"{row.workload} [{step}]"
            rate = f"{row.units_per_s:>11.0f}" if i == 0 else " " * 11
            errors = _errors(row) if i == 0 else ""
            cpu = _cpu(row.cpu) if i == 0 else ""
            lines.append(
                f"{label:<28}{row.clients:>8}{rate}  {lat.p50_ms:>9.2f}{lat.p90_ms:>9.2f}{lat.p99_ms:>9.2f}"
                f"  {errors:<16} {cpu}"
            )
    for b in report.baselines:
        failed = f"failed {b.failed}" if b.failed else "0"
        lines.append(
            f"{'pgbench ' + b.name:<28}{b.clients:>8}{b.tps:>11.0f}  {b.p50_ms:>9.2f}{b.p90_ms:>9.2f}"
            f"{b.p99_ms:>9.2f}  {failed:<16} {_cpu(b.cpu)}"
        )
    lines += _cpu_table(report, rows, cores)
    # The targets first (shares of the reference with their ceiling, latencies), then the rest.
    targets = sorted(
        (c for c in report.checks if c.passed is not None),
        key=lambda c: 0 if c.ceiling is not None else 1 if c.unit == "ms" else 2,
    )
    lines += ["", f"{'target':<52}{'clients':>8}{'value':>10}  {'target':<10}verdict"]
    for c in targets:
        lines.append(f"{c.name:<52}{c.clients or '':>8}{c.shown():>10}  {c.target:<10}{_verdict(c.passed)}")
        if c.evidence:
            lines.append(f"    {'why' if c.passed is False else 'measured'}: {c.evidence}")
    passed = sum(1 for c in targets if c.passed)
    lines.append(f"{passed} of {len(targets)} targets met")
    lines += ["", f"{'ratio (no target)':<52}{'clients':>8}{'value':>10}  CPU-bound ceiling"]
    for c in report.checks:
        if c.passed is None:
            ceiling = f"{c.ceiling:.0%}" if c.ceiling is not None else ""
            lines.append(f"{c.name:<52}{c.clients or '':>8}{c.shown():>10}  {ceiling}")
    if report.tier_reeval:
        r = report.tier_reeval
        lines += [
            "",
            f"tier-reeval: {r['members']} members in {r['seconds']:.1f} s = {r['members_per_s']:.0f} members/s "
            f"({r['changed']} rows written; seeding took {r['seed_seconds']:.1f} s); tiers {r['by_tier']}",
        ]
    if report.events_open:
        lines += ["", "events (open loop at a share of the closed loop's rate):"]
        lines += [
            f"  {f['clients']:>3} connections  {f['rate']:>6.0f}/s offered  {f['ok']:>6} answered  "
            f"p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:7.2f} ms  max {f['max_ms']:7.1f} ms"
            for f in report.events_open
        ]
    if report.checkout_text:
        lines += ["", "checkout (open loop at a fixed rate; consume closed loop):", report.checkout_text]
    for p in report.profiles:
        lines += [
            "",
            f"profile of the API workers: {p['workload']}, {p['clients']} clients, "
            f"{p['rate_under_profiler']:.0f}/s under the profiler; {p['file']}",
        ]
        summary = Summary(p["samples"], p["by_package"], p["top_self"], p["top_total"])
        lines += render_profile(summary)
    if report.consistency:
        lines += ["", "consistency: " + ", ".join(f"{k}={v}" for k, v in report.consistency.items())]
    if report.finished_at and report.started_at:
        lines += ["", f"run: {report.started_at} to {report.finished_at}"]
    return "\n".join(lines)


def _cpu_table(report: Report, rows: list[HttpRow], cores: int) -> list[str]:
    """CPU per op by process, and the rate this machine's cores allow at that cost."""
    lines = [
        "",
        f"CPU per op, ms (a pair for hold+capture; 'own' = client + api + pg; ceiling = {cores} cores / own)",
        f"{'workload':<28}{'clients':>8}{'client':>9}{'api':>9}{'pg':>9}{'own':>9}{'other':>9}{'ceiling/s':>11}",
    ]
    entries: list[tuple[str, int | None, dict[str, float]]] = [
        (row.workload, row.clients, row.cpu_ms_per_op) for row in rows if row.cpu_ms_per_op
    ]
    entries += [
        (m["name"] + (f" #{m['extra']['run']}" if "run" in m.get("extra", {}) else "") , m.get("clients"),
         m["cpu_ms_per_op"])
        for m in report.checkout if m.get("cpu_ms_per_op")
    ]  # fmt: skip
    entries += [
        (f"events open loop {f['share']:.0%}", f["clients"], f["cpu_ms_per_op"])
        for f in report.events_open
        if f.get("cpu_ms_per_op")
    ]
    for name, clients, cpu in entries:
        ceiling = cores * 1000 / cpu["own"] if cpu.get("own") else 0.0
        figures = "".join(_ms(cpu[key]) for key in ("client", "api", "postgres", "own", "other"))
        lines.append(f"{name:<28}{clients or '':>8}{figures}{ceiling:>11.0f}")
    return lines


def _ms(value: float) -> str:
    # Three decimals for a request's few tenths of a ms; whole ms for a 10,000-item batch.
    return f"{value:>9.3f}" if value < 1000 else f" {value:>8.0f}"


def _errors(row: HttpRow) -> str:
    parts = [f"{status}:{n}" for status, n in sorted(row.statuses.items()) if not status.startswith("2")]
    return " ".join(parts) or "0"


def write_json(report: Report, path: Path = RESULTS_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
