"""The worker waits for Redis instead of exiting, and runs each missed cron once."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from arq import cron

from loyalty.ledger import tasks as ledger_tasks
from loyalty.settings import Settings
from loyalty.worker import catch_up_missed_crons, run_resilient


def test_missed_crons_run_once_now_and_future_ones_keep_their_time() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    missed = cron(ledger_tasks.expire_holds, second={0, 10, 20, 30, 40, 50}, unique=True)
    daily = cron(ledger_tasks.purge_idempotency_keys, hour={3}, minute={17}, second={0}, unique=True)
    future = cron(ledger_tasks.vest_points, second={5, 35}, unique=True)
    never_ran = cron(ledger_tasks.expire_points, second={15}, unique=True)
    missed.next_run = now - timedelta(seconds=50)  # five slots passed during the outage
    daily.next_run = now - timedelta(hours=8)
    future.next_run = now + timedelta(seconds=5)
    worker = SimpleNamespace(cron_jobs=[missed, daily, future, never_ran])

    moved = catch_up_missed_crons(worker, now)  # type: ignore[arg-type]

    assert sorted(moved) == sorted([missed.name, daily.name])
    assert missed.next_run == now and daily.next_run == now  # one run each, one job id each
    assert future.next_run == now + timedelta(seconds=5)
    assert never_ran.next_run is None


async def test_worker_waits_for_an_absent_redis_and_stops_on_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(database_url="postgresql://x@127.0.0.1:1/x", redis_url=f"redis://127.0.0.1:{port}/0")
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="loyalty.worker")
    task = asyncio.ensure_future(run_resilient(settings, stop))
    await asyncio.sleep(2.0)
    assert not task.done(), "the worker exited while Redis was away"
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2
    lines = [r.getMessage() for r in caplog.records if r.name == "loyalty.worker"]
    # One line for the change of state, not one per attempt.
    assert len(lines) == 1 and "redis unavailable" in lines[0], lines
