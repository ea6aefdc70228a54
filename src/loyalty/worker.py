"""The arq worker: every domain's jobs and cron schedules, on the configured Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis.asyncio
import redis.exceptions
from arq import cron
from arq.connections import RedisSettings
from arq.worker import Worker, create_worker
from sqlalchemy.exc import SQLAlchemyError

from loyalty import distribution
from loyalty.activity import replay_tasks
from loyalty.activity import tasks as activity_tasks
from loyalty.benefits import tasks as benefit_tasks
from loyalty.console import tasks as console_tasks
from loyalty.db import create_engine
from loyalty.imports import tasks as import_tasks
from loyalty.jobs import lost as lost_jobs
from loyalty.ledger import tasks as ledger_tasks
from loyalty.observability import wiring as observability
from loyalty.reports import tasks as report_tasks
from loyalty.settings import Settings
from loyalty.tiers import tasks as tier_tasks
from loyalty.webhooks import tasks as webhook_tasks

EVERY_10_SECONDS = set(range(0, 60, 10))
EVERY_5_SECONDS = set(range(0, 60, 5))


async def _requeue_reassess(redis: Any, run: Mapping[str, Any]) -> None:
    await tier_tasks.enqueue_reassess(redis, programme_id=run["programme_id"], job_id=run["job_id"])


# The jobs that can be queued again from their job_runs record alone.
REQUEUE: dict[str, lost_jobs.Requeue] = {tier_tasks.JOB_NAME: _requeue_reassess}


async def recover_lost_jobs(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: runs recorded as queued that Redis lost are queued again or marked failed."""
    return await lost_jobs.recover_lost_jobs(ctx["engine"], ctx["redis"], REQUEUE)


def build_worker_settings(settings: Settings) -> dict[str, Any]:
    async def startup(ctx: dict[str, Any]) -> None:
        # Runs again on every reconnect to Redis: the engine is made once.
        ctx["settings"] = settings
        if "engine" not in ctx:
            ctx["engine"] = create_engine(settings.database_url or "", pool_size=4)
        if not distribution.Layout.citus:
            # The jobs choose their SQL by the layout, as the API does (docs/scaling.md). A
            # database that cannot answer now is asked again on the next reconnect; the ledger's
            # and the webhooks' jobs ask it themselves.
            with contextlib.suppress(OSError, TimeoutError, SQLAlchemyError):
                async with ctx["engine"].connect() as conn:
                    distribution.Layout.citus = await distribution.on_citus(conn)

    async def shutdown(ctx: dict[str, Any]) -> None:
        engine = ctx.pop("engine", None)
        if engine is not None:
            await engine.dispose()

    worker = {
        "functions": [
            ledger_tasks.expire_holds,
            ledger_tasks.vest_points,
            ledger_tasks.expire_points,
            ledger_tasks.budget_alerts,
            ledger_tasks.purge_idempotency_keys,
            webhook_tasks.purge_webhook_history,
            activity_tasks.refresh_member_facts,
            replay_tasks.replay_earning_rules,
            tier_tasks.assess_due_tiers,
            tier_tasks.reassess_tiers,
            webhook_tasks.deliver_webhooks,
            webhook_tasks.notify_expiring_soon,
            benefit_tasks.release_expired_reservations,
            benefit_tasks.pay_benefit_gifts,
            benefit_tasks.announce_benefit_campaigns,
            report_tasks.rollup_reports,
            report_tasks.refresh_expiry_forecast,
            import_tasks.run_import,
            console_tasks.purge_console_sessions,
            recover_lost_jobs,
        ],
        "cron_jobs": [
            cron(ledger_tasks.expire_holds, second=EVERY_10_SECONDS, unique=True, run_at_startup=True),
            cron(ledger_tasks.vest_points, second={5, 35}, unique=True, run_at_startup=True),
            cron(ledger_tasks.expire_points, second={15, 45}, unique=True, run_at_startup=True),
            cron(ledger_tasks.budget_alerts, second={25, 55}, unique=True, run_at_startup=True),
            cron(ledger_tasks.purge_idempotency_keys, hour={3}, minute={17}, second={0}, unique=True),
            cron(webhook_tasks.purge_webhook_history, hour={3}, minute={37}, second={0}, unique=True),
            cron(activity_tasks.refresh_member_facts, hour={2}, minute={7}, second={0}, unique=True),
            cron(
                tier_tasks.assess_due_tiers,
                minute=set(range(3, 60, 5)),
                second={0},
                unique=True,
                run_at_startup=True,
            ),
            # Deliveries are rows in PostgreSQL: with Redis or the worker down they wait, then catch up.
            cron(webhook_tasks.deliver_webhooks, second=EVERY_5_SECONDS, unique=True, run_at_startup=True),
            cron(webhook_tasks.notify_expiring_soon, hour={6}, minute={11}, second={0}, unique=True),
            cron(
                benefit_tasks.release_expired_reservations,
                second=EVERY_10_SECONDS,
                unique=True,
                run_at_startup=True,
            ),
            # Birthdays in every programme's time zone: hourly, idempotent by ledger key.
            cron(benefit_tasks.pay_benefit_gifts, minute={23}, second={0}, unique=True),
            # Campaigns that started: their members are told within a minute.
            cron(benefit_tasks.announce_benefit_campaigns, second={50}, unique=True, run_at_startup=True),
            # The dashboard's rollups, from a watermark: seconds behind the ledger.
            cron(report_tasks.rollup_reports, second=EVERY_10_SECONDS, unique=True, run_at_startup=True),
            cron(console_tasks.purge_console_sessions, minute={41}, second={0}, unique=True),
            cron(recover_lost_jobs, second={40}, unique=True),
            cron(
                report_tasks.refresh_expiry_forecast,
                minute=set(range(1, 60, 10)),
                second={30},
                unique=True,
                run_at_startup=True,
            ),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": _redis_settings(settings.redis_url or "redis://localhost"),
        "queue_name": "loyalty:queue",
        "max_jobs": 10,
        "job_timeout": 300,
        "handle_signals": True,
    }
    return observability.instrument_worker(worker, settings)


def _redis_settings(url: str) -> RedisSettings:
    # No retries inside arq: the loop below waits for Redis itself, with one log line per change.
    redis_settings = RedisSettings.from_dsn(url)
    redis_settings.conn_retries = 0
    redis_settings.conn_timeout = 2
    return redis_settings


# The worker's own waits for Redis: 0.5 s doubling to 10 s while it is away.
_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 5.0
_REDIS_DOWN = (redis.exceptions.RedisError, OSError, TimeoutError)
log = logging.getLogger("loyalty.worker")


async def _redis_answers(url: str) -> bool:
    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(await client.ping())
    except _REDIS_DOWN:
        return False
    finally:
        with contextlib.suppress(*_REDIS_DOWN):
            await client.aclose()


def catch_up_missed_crons(worker: Worker, now: datetime) -> list[str]:
    """After an outage, each cron whose time passed while Redis was away runs once, now, not
    once per missed slot: its next run is moved to ``now``. The job id arq gives it
    (``cron:<name>:<ms>``, unique=True) is that of one slot, so it is enqueued once."""
    moved = []
    for job in worker.cron_jobs:
        if job.next_run is not None and job.next_run < now:
            job.next_run = now
            moved.append(job.name)
    return moved


async def _drop_pool(worker: Worker) -> None:
    pool = worker._pool
    worker._pool = None
    if pool is not None:
        with contextlib.suppress(*_REDIS_DOWN):
            await asyncio.wait_for(pool.close(close_connection_pool=True), 2)


async def run_resilient(settings: Settings, stop: asyncio.Event) -> None:
    """Run the arq worker until ``stop``; while Redis is away (at start, or any time later)
    wait for it with backoff, then carry on with the same worker: jobs already running go on,
    crons due meanwhile run once (see catch_up_missed_crons). Never exits on a Redis error."""
    url = settings.redis_url or "redis://localhost"
    worker = create_worker(build_worker_settings(settings), handle_signals=False)
    backoff = _BACKOFF_MIN
    down_since: float | None = None
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            if not await _redis_answers(url):
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "redis unavailable; jobs wait, retrying with backoff up to %.0fs", _BACKOFF_MAX
                    )
                await asyncio.wait({stopper}, timeout=backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if down_since is not None:
                missed = catch_up_missed_crons(worker, datetime.now(tz=worker.timezone))
                log.warning(
                    "redis is back after %.1fs; resuming (%d crons due meanwhile run now)",
                    time.monotonic() - down_since,
                    len(missed),
                )
                down_since = None
            backoff = _BACKOFF_MIN
            main = asyncio.ensure_future(worker.main())
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_REDIS_DOWN):
                    await main
                break
            try:
                main.result()
            except _REDIS_DOWN as exc:
                down_since = time.monotonic()
                log.warning(
                    "redis connection lost (%s); jobs wait, reconnecting with backoff", type(exc).__name__
                )
                await _drop_pool(worker)
    finally:
        stopper.cancel()
        await _close(worker)


async def _close(worker: Worker) -> None:
    """Cancel running jobs (each is its own transaction, so nothing is half done) and let go of
    Redis and PostgreSQL, whether or not Redis still answers."""
    for task in [*worker.tasks.values(), *worker.job_tasks.values()]:
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values(), return_exceptions=True), 10)
    if worker._pool is not None:
        with contextlib.suppress(*_REDIS_DOWN):
            await asyncio.wait_for(worker.pool.delete(worker.health_check_key), 2)
    await _drop_pool(worker)
    if worker.on_shutdown is not None:
        await worker.on_shutdown(worker.ctx)


def run_worker(settings: Settings) -> None:
    # Logging is set up by the `loyalty worker` command (JSON lines, arq's cron chatter quieted).
    observability.serve_worker_metrics(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_resilient(settings, stop)

    asyncio.run(main())
