"""Prometheus metrics of the API and the worker (prometheus-client).

Under ``loyalty serve`` every process (the granian workers and the arq worker) writes its
counters into ``PROMETHEUS_MULTIPROC_DIR``, and any API process's ``/metrics`` sums them all.
Without that variable (tests, a single process) they live in this process's memory.

Hot-path rule: a label set is resolved once (``.labels()`` children cached in plain dicts),
so a request costs a dict lookup and one ``observe``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import wraps
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loyalty.errors import DomainError
from loyalty.observability import logs

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "unmatched"

HTTP_REQUESTS = Histogram(
    "loyalty_http_request_duration_seconds",
    "HTTP requests by route template, method and status: _count is the request count.",
    ["route", "method", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LEDGER_OPERATIONS = Counter(
    "loyalty_ledger_operations_total",
    "Ledger postings by kind and outcome (ok, replayed, refused); code names a refusal.",
    ["kind", "outcome", "code"],
)
JOB_RUNS = Counter(
    "loyalty_job_runs_total", "arq job runs by job and outcome (ok, failed).", ["job", "outcome"]
)
JOB_FAILURES = Counter(
    "loyalty_job_failures_total", "arq job runs that raised, by job and exception type.", ["job", "error"]
)
JOB_DURATION = Histogram(
    "loyalty_job_duration_seconds",
    "arq job run time by job.",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0),
)
GROUP_COMMIT_BATCH = Histogram(
    "loyalty_group_commit_batch_size",
    "Postings per group-commit call (ledger/group_commit.py); _count is the number of flushes.",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
GROUP_COMMIT_RETRIES = Counter(
    "loyalty_group_commit_retries_total",
    "Group-commit work sent again: split (a batch lost to a deadlock, sent in halves), "
    "retried (one posting of a batch sent again alone), stale_map (Citus: a batch refused for an "
    "out-of-date shard map, its postings sent again alone).",
    ["reason"],
)
# Pools are per process; livesum adds up the live API processes' figures.
DB_POOL = Gauge(
    "loyalty_db_pool_connections",
    "Database connections per pool (sqlalchemy, posting) and state (size, checked_out, idle).",
    ["pool", "state"],
    multiprocess_mode="livesum",
)

# Posting functions and the operation kind each one is.
LEDGER_KINDS = {
    "ledger_earn": "earn",
    "ledger_spend": "spend",
    "ledger_hold": "hold",
    "ledger_capture": "capture",
    "ledger_void": "void",
    "ledger_clawback": "clawback",
    "ledger_adjust": "adjust",
    "ledger_transfer": "transfer",
    "ledger_earn_batch": "batch",
}

_enabled = True
_http_children: dict[tuple[str, str, int], Any] = {}
_ledger_children: dict[tuple[str, str, str], Any] = {}


def set_enabled(enabled: bool) -> None:
    """Off: ledger operations are not counted (the edge middleware is not installed either)."""
    global _enabled
    _enabled = enabled


def http_observer(route: str, method: str, status: int) -> Any:
    key = (route, method, status)
    child = _http_children.get(key)
    if child is None:
        child = _http_children[key] = HTTP_REQUESTS.labels(route, method, str(status))
    return child


def count_ledger(kind: str, outcome: str, code: str = "") -> None:
    if not _enabled:
        return
    key = (kind, outcome, code)
    child = _ledger_children.get(key)
    if child is None:
        child = _ledger_children[key] = LEDGER_OPERATIONS.labels(kind, outcome, code)
    child.inc()


def count_group_commit(size: int, *, outcome: str = "flush") -> None:
    """A group-commit flush of ``size`` postings, or (outcome split/retried/stale_map) work sent again."""
    if not _enabled:
        return
    if outcome == "flush":
        GROUP_COMMIT_BATCH.observe(size)
    else:
        GROUP_COMMIT_RETRIES.labels(outcome).inc()


async def metered_post(function: str, call: Awaitable[Any]) -> Any:
    """Await one posting call, counting it under its kind (unknown functions go uncounted)."""
    kind = LEDGER_KINDS.get(function)
    if kind is None or not _enabled:
        return await call
    try:
        result = await call
    except DomainError as exc:
        count_ledger(kind, "refused", exc.code)
        raise
    count_ledger(kind, "replayed" if result.replayed else "ok")
    return result


# --- jobs -------------------------------------------------------------------------------------

JobFunction = Callable[..., Awaitable[Any]]
JOB_CONTEXT_KEY = "request_id"


def job_context() -> dict[str, Any]:
    """Keyword arguments for ``enqueue_job`` that carry the current request id into the job."""
    rid = logs.request_id.get()
    return {JOB_CONTEXT_KEY: rid} if rid is not None else {}


def observed_job(function: JobFunction) -> JobFunction:
    """Wrap an arq job: runs, failures and duration by job name, and the enqueuing request's id
    (the ``request_id`` keyword, see ``job_context``) bound to the job's log lines."""
    if getattr(function, "__loyalty_observed__", False):
        return function
    name = function.__name__
    duration = JOB_DURATION.labels(name)
    ok = JOB_RUNS.labels(name, "ok")
    failed = JOB_RUNS.labels(name, "failed")

    @wraps(function)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        rid = kwargs.pop(JOB_CONTEXT_KEY, None)
        token = logs.request_id.set(rid if isinstance(rid, str) else None)
        started = time.perf_counter()
        try:
            result = await function(ctx, *args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                failed.inc()
                JOB_FAILURES.labels(name, type(exc).__name__).inc()
            raise
        else:
            ok.inc()
            return result
        finally:
            duration.observe(time.perf_counter() - started)
            logs.request_id.reset(token)

    run.__loyalty_observed__ = True  # type: ignore[attr-defined]
    return run


def observe_worker(worker_settings: dict[str, Any]) -> dict[str, Any]:
    """The arq worker settings with every function and cron job wrapped by ``observed_job``."""
    worker_settings["functions"] = [observed_job(f) for f in worker_settings.get("functions", [])]
    for cron_job in worker_settings.get("cron_jobs", []):
        cron_job.coroutine = observed_job(cron_job.coroutine)
    return worker_settings


# --- the process set -------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: Path) -> Path:
    """Create (or empty) the directory the children share; called by ``loyalty serve`` before
    it starts them, so figures of an earlier run never mix into this one."""
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    return path


def process_exited() -> None:
    """This process's live gauges stop counting (its counters stay: they are history)."""
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), directory)


def sample_pools(state: Any) -> None:
    """Record this process's pool figures (cheap attribute reads)."""
    engine = getattr(state, "engine", None)
    if engine is not None:
        pool = engine.pool
        size = getattr(pool, "size", None)
        checked_out = getattr(pool, "checkedout", None)
        if callable(size) and callable(checked_out):
            DB_POOL.labels("sqlalchemy", "size").set(size())
            DB_POOL.labels("sqlalchemy", "checked_out").set(checked_out())
    posting = getattr(state, "posting_pool", None)
    if posting is not None:
        DB_POOL.labels("posting", "size").set(posting.get_size())
        DB_POOL.labels("posting", "idle").set(posting.get_idle_size())
        DB_POOL.labels("posting", "checked_out").set(posting.get_size() - posting.get_idle_size())


async def sample_pools_forever(state: Any, every: float = 5.0) -> None:
    """Each API process refreshes its pool gauges, so a scrape answered by one sees them all."""
    while True:
        sample_pools(state)
        await asyncio.sleep(every)


# --- figures read from the database at scrape time --------------------------------------------

# One statement: the webhook backlog (deliveries are the outbox's fan-out, written by a trigger
# in the event's own transaction, so an open delivery is an undelivered outbox event), and per
# programme the points issued (as the budgets report them), redeemed and expired (the balances
# of the redemption and breakage sinks). Indexed: the due-deliveries partial index, the system
# accounts' unique index, budgets by programme.
DATABASE_GAUGES_SQL = """
SELECT NULL::text AS programme,
       (SELECT count(*) FROM webhook_deliveries WHERE status IN ('pending', 'failed'))::bigint AS a,
       (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM webhook_deliveries
         WHERE status IN ('pending', 'failed'))::float8 AS b,
       (SELECT count(*) FROM webhook_deliveries WHERE status IN ('pending', 'failed')
         AND next_attempt_at <= now())::bigint AS c
UNION ALL
SELECT p.code,
       (coalesce((SELECT sum(b.cap) FROM budgets b WHERE b.programme_id = p.id), 0)
        - coalesce((SELECT sum(ab.available) FROM budgets b JOIN account_balances ab
                    ON ab.programme_id = b.programme_id AND ab.account_id = b.account_id
                    WHERE b.programme_id = p.id), 0))::bigint,
       coalesce((SELECT sum(ab.available) FROM accounts a JOIN account_balances ab
                 ON ab.programme_id = a.programme_id AND ab.account_id = a.id
                 WHERE a.programme_id = p.id AND a.kind = 'redemption'), 0)::float8,
       coalesce((SELECT sum(ab.available) FROM accounts a JOIN account_balances ab
                 ON ab.programme_id = a.programme_id AND ab.account_id = a.id
                 WHERE a.programme_id = p.id AND a.kind = 'breakage'), 0)::bigint
FROM programmes p
"""


class DatabaseGauges:
    """The database figures, read by one query with a timeout and kept for ``ttl`` seconds, so
    scrapes (from several Prometheus servers, or a tight interval) cost the database little."""

    def __init__(self, *, ttl: float = 5.0, timeout: float = 1.0) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._at = -1e9
        self._families: list[Metric] = []
        self._lock = asyncio.Lock()

    async def families(self, pool: Any) -> list[Metric]:
        if time.monotonic() - self._at < self.ttl:
            return self._families
        async with self._lock:
            if time.monotonic() - self._at < self.ttl:
                return self._families
            up = GaugeMetricFamily(
                "loyalty_database_gauges_up", "1 if the scrape-time query answered in time."
            )
            try:
                rows = await pool.fetch(DATABASE_GAUGES_SQL, timeout=self.timeout)
            except Exception:  # a slow or absent database must not fail the scrape
                up.add_metric([], 0)
                self._families = [up]
            else:
                up.add_metric([], 1)
                self._families = [up, *_database_families(rows)]
            self._at = time.monotonic()
            return self._families


def _database_families(rows: Iterable[Any]) -> list[Metric]:
    open_ = GaugeMetricFamily("loyalty_webhook_deliveries_open", "Webhook deliveries not yet delivered.")
    due = GaugeMetricFamily("loyalty_webhook_deliveries_due", "Open deliveries whose next attempt is due.")
    age = GaugeMetricFamily(
        "loyalty_webhook_oldest_open_age_seconds", "Age of the oldest open webhook delivery (0: none)."
    )
    issued = GaugeMetricFamily(
        "loyalty_points_issued",
        "Points issued out of budgets (what GET /v1/budgets reports).",
        labels=["programme"],
    )
    redeemed = GaugeMetricFamily(
        "loyalty_points_redeemed", "Points redeemed (spent or captured).", labels=["programme"]
    )
    expired = GaugeMetricFamily(
        "loyalty_points_expired", "Points expired into breakage.", labels=["programme"]
    )
    for row in rows:
        if row[0] is None:
            open_.add_metric([], row[1])
            age.add_metric([], row[2])
            due.add_metric([], row[3])
        else:
            issued.add_metric([row[0]], row[1])
            redeemed.add_metric([row[0]], row[2])
            expired.add_metric([row[0]], row[3])
    return [open_, due, age, issued, redeemed, expired]


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def render(state: Any, database: DatabaseGauges) -> bytes:
    """The exposition text: every process's metrics, then the scrape-time database figures."""
    sample_pools(state)
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    posting = getattr(state, "posting_pool", None)
    if posting is None:
        return text
    extra = CollectorRegistry()
    extra.register(_Fixed(await database.families(posting)))
    return text + generate_latest(extra)
