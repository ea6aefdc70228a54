"""Results, ratios against the raw baselines, targets, the printed table and latest.json."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import CpuShare
from bench.httpload import LoadResult
from bench.workloads import HTTP_WORKLOADS

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "latest.json"
# Statuses that are an answer of the ledger, not a failure of the service.
BUSINESS_STATUS = "422"


# Marks the rows of the second API run, with LOYALTY_METRICS_ENABLED=false.
OBSERVABILITY_OFF = " (obs. off)"


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

    def http_rate(self, workload: str, clients: int) -> float | None:
        for row in self.http:
            if row.workload == workload and row.clients == clients and row.skipped is None:
                return row.units_per_s
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
    """The issue's targets (PASS/MISS) and the informative ratios, per client count."""
    checks: list[Check] = []
    for n in clients:
        spread = report.http_rate("earn-spread", n)
        hot = report.http_rate("earn-hot", n)
        pairs = [
            ("earn-spread / raw earn-spread", spread, report.baseline_rate("raw earn-spread", n), 0.5),
            ("earn-hot / earn-spread (HTTP)", hot, spread, 0.9),
            ("earn-hot / raw earn-hot", hot, report.baseline_rate("raw earn-hot", n), None),
            ("spend / raw spend", report.http_rate("spend", n), report.baseline_rate("raw spend", n), None),
            ("earn-spread / engine earn-spread", spread, report.baseline_rate("engine earn-spread", n), None),
            ("engine earn-spread / raw earn-spread", report.baseline_rate("engine earn-spread", n),
             report.baseline_rate("raw earn-spread", n), None),
            ("earn-spread / minimal-select (HTTP)", spread, report.http_rate("minimal-select", n), None),
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
    for row in report.http:
        if row.workload == "batch-earn" and row.skipped is None:
            rate = row.units_per_s
            checks.append(
                Check("batch-earn points-transfers/s", row.clients, rate, ">= 20000", rate >= 20_000, "rate")
            )
        if row.workload in ("earn-spread", "earn-hot") and row.skipped is None:
            if row.clients == 16:
                p99 = row.main_latency.p99_ms
                checks.append(Check(f"{row.workload} p99 ms", 16, p99, "<= 20 ms", p99 <= 20, "ms"))
            errors = Check(f"{row.workload} errors", row.clients, row.errors, "= 0", row.errors == 0, "count")
            checks.append(errors)
        if row.workload == "events" and row.skipped is None:
            if row.clients == 16:
                p99 = row.main_latency.p99_ms
                checks.append(Check("events p99 ms, closed loop", 16, p99, "<= 30 ms", p99 <= 30, "ms"))
            checks.append(Check("events errors", row.clients, row.errors, "= 0", row.errors == 0, "count"))
    for fixed in report.events_open:
        if fixed["clients"] == 16:
            name = f"events p99 ms at {fixed['rate']:.0f}/s ({fixed['share']:.0%})"
            checks.append(Check(name, 16, fixed["p99_ms"], "<= 30 ms", fixed["p99_ms"] <= 30, "ms"))
        failed = fixed["sent"] - fixed["ok"]
        checks.append(Check("events open-loop errors", fixed["clients"], failed, "= 0", failed == 0, "count"))
    reeval = report.tier_reeval
    if reeval.get("members"):
        rate = reeval["members_per_s"]
        # The target is a million members in 60 s; a smaller (--quick) run is projected.
        projected = 1_000_000 / rate if rate else float("inf")
        label = "tier-reeval 1M members s" + ("" if reeval["members"] >= 1_000_000 else " (projected)")
        checks.append(Check(label, None, projected, "<= 60 s", projected <= 60, "s"))
        checks.append(Check("tier-reeval members/s", None, rate, "", None, "rate"))
    report.checks = checks


# --- output -------------------------------------------------------------------------------------


def _verdict(passed: bool | None) -> str:
    return "" if passed is None else ("PASS" if passed else "MISS")


def _cpu(cpu: CpuShare | None) -> str:
    if cpu is None:
        return ""
    return f"{cpu.total:.2f} = {cpu.client:.2f} + {cpu.api:.2f} + {cpu.postgres:.2f} + {cpu.other:.2f}"


def render(report: Report) -> str:
    m = report.machine
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gb']} GB, "
        f"PostgreSQL {m['postgresql']}, Python {m['python']}",
        "",
        f"{'workload':<28}{'clients':>8}{'rate/s':>11}  {'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"  {'errors':<16} cores busy = client + api + pg + other",
    ]
    order = {name: i for i, name in enumerate(("minimal-select", *HTTP_WORKLOADS))}

    def place(row: HttpRow) -> tuple[int, int, bool]:
        base = row.workload.removesuffix(OBSERVABILITY_OFF)
        return order.get(base, 99), row.clients, base != row.workload

    for row in sorted(report.http, key=place):
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
    lines += ["", f"{'ratio / target':<44}{'clients':>8}{'value':>10}  {'target':<10}verdict"]
    for c in report.checks:
        lines.append(f"{c.name:<44}{c.clients or '':>8}{c.shown():>10}  {c.target:<10}{_verdict(c.passed)}")
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
        lines += ["", "checkout (open loop at a fixed rate):", report.checkout_text]
    if report.consistency:
        lines += ["", "consistency: " + ", ".join(f"{k}={v}" for k, v in report.consistency.items())]
    return "\n".join(lines)


def _errors(row: HttpRow) -> str:
    parts = [f"{status}:{n}" for status, n in sorted(row.statuses.items()) if not status.startswith("2")]
    return " ".join(parts) or "0"


def write_json(report: Report, path: Path = RESULTS_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
