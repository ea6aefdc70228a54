"""Outages against a real `loyalty serve` under an earn load (`make chaos`; `--short` in CI).

In order: kill -9 of the API and of the worker, PostgreSQL stopped, PostgreSQL frozen, Redis
stopped. During each, every answer is a 2xx or a 503 problem with Retry-After, within the
bound, never a 500 and never a hang; after each, `loyalty ledger verify` is clean and every
earn that got a 2xx is in the ledger exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from loyalty import embedded
from tests.chaos.harness import Answer, Plan, Rig, audit, check_answers, wait_until

pytestmark = pytest.mark.chaos

RECOVERY_TIMEOUT = 60.0


def _recovery(rig: Rig, restored_at: float) -> float:
    """Seconds from ``restored_at`` until an earn started after it was answered 2xx."""

    def first_ok() -> Answer | None:
        return next((a for a in rig.load.since(restored_at) if a.status and 200 <= a.status < 300), None)

    wait_until(lambda: first_ok() is not None, RECOVERY_TIMEOUT)
    answer = first_ok()
    assert answer is not None
    return max(0.0, answer.started + answer.latency - restored_at)


def _after(rig: Rig, name: str) -> None:
    """ledger verify clean, and every acknowledged earn so far in the ledger exactly once."""
    time.sleep(1)  # answers in flight land in the record
    verify = rig.serve.cli("ledger", "verify")
    assert verify.returncode == 0, f"{name}: ledger verify failed:\n{verify.stdout}\n{verify.stderr}"
    acknowledged = [a.key for a in rig.load.answers if a.status is not None and 200 <= a.status < 300]
    asyncio.run(audit(rig.serve.database_url(), acknowledged))
    print(
        f"{name:<16} ledger verify clean; {len(acknowledged)} acknowledged earns so far, each once",
        flush=True,
    )


def _kill_child(rig: Rig, kind: str, kills: int) -> None:
    started = time.monotonic()
    recoveries = []
    for _ in range(kills):
        child = rig.serve.child(kind)
        assert child is not None, rig.serve.log_tail()
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        rig.serve.wait_child(kind, other_than=child.pid)
        if kind == "api":
            # Until the supervisor has cleaned up, the killed master's worker may still answer:
            # count from the new child's start, and time from the kill.
            new_at = time.monotonic()
            _recovery(rig, new_at)
            first = next(a for a in rig.load.since(new_at) if a.status and 200 <= a.status < 300)
            recoveries.append(first.started + first.latency - killed_at)
        else:
            # The API never noticed; the new worker is up once it has run a moment.
            recoveries.append(time.monotonic() - killed_at)
            time.sleep(0.5)
        assert rig.serve.process is not None and rig.serve.process.poll() is None, rig.serve.log_tail()
    answers = rig.load.since(started)
    figures = check_answers(
        f"kill -9 {kind}", answers, recovery=max(recoveries), allow_no_answer=kind == "api"
    )
    if kind == "worker":
        assert figures.no_answer == 0 and figures.unavailable == 0, (
            "killing the worker must not touch the API"
        )
    _after(rig, f"kill -9 {kind}")


def test_warm_up(rig: Rig) -> None:
    started = time.monotonic()
    time.sleep(3)
    figures = check_answers("steady", rig.load.since(started), recovery=None, allow_no_answer=False)
    assert figures.ok > 0 and figures.unavailable == 0


def test_kill_api(rig: Rig, plan: Plan) -> None:
    _kill_child(rig, "api", plan.kills)


def test_kill_worker(rig: Rig, plan: Plan) -> None:
    _kill_child(rig, "worker", plan.kills)


def test_postgres_stopped(rig: Rig, plan: Plan) -> None:
    started = time.monotonic()
    embedded.stop_postgres(rig.serve.data_dir)
    time.sleep(plan.pg_outage)
    during = rig.load.since(started)
    restored_at = time.monotonic()
    embedded.start_postgres(rig.serve.data_dir)
    recovery = _recovery(rig, restored_at)
    figures = check_answers(
        "postgres stop", rig.load.since(started), recovery=recovery, allow_no_answer=False
    )
    assert any(a.status == 503 and a.code == "database_unavailable" for a in during), "no 503 seen"
    assert figures.unavailable > 0
    _after(rig, "postgres stop")


def test_postgres_frozen(rig: Rig, plan: Plan) -> None:
    started = time.monotonic()
    frozen = embedded.freeze_postgres(rig.serve.data_dir, True)
    assert frozen, "no PostgreSQL processes to freeze"
    try:
        time.sleep(plan.pg_outage)
    finally:
        embedded.freeze_postgres(rig.serve.data_dir, False)
    restored_at = time.monotonic()
    recovery = _recovery(rig, restored_at)
    # Requests stuck on the frozen server are answered (503) within the bound, some after the thaw.
    during = [a for a in rig.load.since(started) if a.started < restored_at]
    check_answers("postgres freeze", rig.load.since(started), recovery=recovery, allow_no_answer=False)
    assert any(a.status == 503 and a.code == "database_unavailable" for a in during), "no 503 seen"
    _after(rig, "postgres freeze")


def test_redis_stopped(rig: Rig, plan: Plan) -> None:
    worker = rig.serve.child("worker")
    api = rig.serve.child("api")
    assert worker is not None and api is not None
    log_before = len(rig.serve.log_path.read_text(errors="replace"))
    started = time.monotonic()
    embedded.stop_redis(rig.serve.data_dir)
    time.sleep(plan.redis_outage)
    during = rig.load.since(started)
    probes = rig.load.probes_since(started + 1.5)
    restored_at = time.monotonic()
    embedded.start_redis(rig.serve.data_dir)
    figures = check_answers("redis stop", during, recovery=None, allow_no_answer=False)
    # Earns never needed Redis: all of them went on.
    assert figures.ok == figures.requests > 0
    assert probes and all(
        p.status == 503 and p.code == "redis_unavailable" and p.retry_after for p in probes
    ), [(p.status, p.code) for p in probes]
    # Nothing exited: the same worker and API processes, still running.
    assert rig.serve.child("worker") is not None and rig.serve.child("worker").pid == worker.pid  # type: ignore[union-attr]
    assert rig.serve.child("api") is not None and rig.serve.child("api").pid == api.pid  # type: ignore[union-attr]

    # Back: what needs Redis works again, and the worker picked the queue up.
    def reassess_accepted() -> bool:
        return any(p.status == 202 for p in rig.load.probes_since(restored_at))

    recovery = wait_until(reassess_accepted, RECOVERY_TIMEOUT)

    def outage_log() -> str:
        return rig.serve.log_path.read_text(errors="replace")[log_before:]

    wait_until(lambda: "redis is back" in outage_log(), RECOVERY_TIMEOUT)
    print(f"{'redis stop':<16} reassess accepted again {recovery:.2f}s after Redis returned", flush=True)
    # One line per change of state, not a traceback per poll.
    assert "Traceback" not in outage_log(), outage_log()[-3000:]
    _after(rig, "redis stop")
