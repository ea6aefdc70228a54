"""Tier jobs for the arq worker: scheduled re-assessment of due members, set-based per programme,
and the full re-evaluation of a programme (after a new ladder is published, or on demand).

Each scheduled batch is one transaction; its rows are locked with SKIP LOCKED, so the job is safe
to run twice or on several workers, and a member being assessed by an event is skipped. The full
re-evaluation waits for such locks instead: it must reach every member."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.jobs import runs
from loyalty.observability.metrics import job_context
from loyalty.tiers import repository, service

log = logging.getLogger("loyalty.tiers.tasks")
BATCH = 1000
# A full re-evaluation touches every member: larger slices amortise the statement's planning
# and the per-tier rule columns, and still commit every few hundred milliseconds.
REASSESS_BATCH = 5000
REASSESS_ACTOR = "system:tiers-reassess"
# Slices in flight at once: one per core of a small server (the engine's pool must allow it).
REASSESS_CONCURRENCY = 2
QUEUE_NAME = "loyalty:queue"  # worker.py's queue_name
JOB_NAME = "reassess_tiers"


async def assess_due(
    engine: AsyncEngine, *, now: datetime, batch: int = BATCH, max_batches: int = 100
) -> int:
    async with engine.connect() as conn:
        programme_ids = await repository.programmes_with_ladders(conn, now)
    total = 0
    for programme_id in programme_ids:
        for _ in range(max_batches):
            async with engine.begin() as conn:
                done, more = await service.run_scheduled(
                    conn, programme_id=programme_id, now=now, batch=batch
                )
            total += done
            if not more:
                break
    return total


async def assess_due_tiers(ctx: dict[str, Any]) -> int:
    """Renew, start grace, demote and expire pins of every member whose assessment is due."""
    n = await assess_due(ctx["engine"], now=datetime.now(UTC))
    if n:
        log.info("re-assessed the tiers of %d members", n)
    return n


@dataclass(frozen=True, slots=True)
class ReassessResult:
    members: int
    changed: int
    seconds: float

    @property
    def members_per_s(self) -> float:
        return self.members / self.seconds if self.seconds > 0 else 0.0


async def reassess_programme(
    engine: AsyncEngine,
    *,
    programme_id: int,
    now: datetime | None = None,
    batch: int = REASSESS_BATCH,
    concurrency: int = REASSESS_CONCURRENCY,
    actor: str = REASSESS_ACTOR,
) -> ReassessResult:
    """Every member of the programme against the ladder in force, keyset over member id, one
    transaction per slice, ``concurrency`` slices at a time (PostgreSQL runs a statement on one
    core; disjoint slices never wait for each other). Safe to run twice and to stop half-way:
    a member assessed again at once changes nothing. ``now`` is fixed for the whole run, so a
    run that spans midnight still treats everyone alike."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    cursor = 0
    next_slice = asyncio.Lock()
    totals = [0, 0]

    async def work() -> None:
        nonlocal cursor
        while True:
            async with next_slice:
                after = cursor
                async with engine.connect() as conn:
                    upto = await service.next_reassess_slice(
                        conn, programme_id=programme_id, after=after, batch=batch
                    )
                if upto is None:
                    return
                cursor = upto
            async with engine.begin() as conn:
                done = await service.reassess_slice(
                    conn, programme_id=programme_id, now=now, after=after, upto=upto, actor=actor
                )
            totals[0] += done.members
            totals[1] += done.changed

    await asyncio.gather(*(work() for _ in range(max(1, concurrency))))
    return ReassessResult(totals[0], totals[1], time.perf_counter() - started)


async def reassess_tiers(ctx: dict[str, Any], programme_id: int) -> dict[str, Any]:
    """arq job: the full re-evaluation of one programme (enqueued by publish or the operator).
    Its run is recorded in job_runs (GET /v1/jobs/{job_id}), a failure included."""
    engine = ctx["engine"]
    async with runs.recorded(
        engine, job_id=ctx.get("job_id"), programme_id=programme_id, name=JOB_NAME
    ) as run:
        result = await reassess_programme(engine, programme_id=programme_id)
        log.info(
            "re-assessed %d members of programme %d (%d changed) in %.1f s",
            result.members, programme_id, result.changed, result.seconds,
        )  # fmt: skip
        run.result = {
            "members": result.members,
            "changed": result.changed,
            "seconds": round(result.seconds, 3),
        }
    return run.result


def new_reassess_job_id(programme_id: int) -> str:
    return f"tiers-reassess:{programme_id}:{uuid.uuid4().hex[:12]}"


async def enqueue_reassess(
    redis: Redis, *, programme_id: int, defer_until: datetime | None = None, job_id: str | None = None
) -> str:
    """Put a full re-evaluation of the programme on the worker's queue; answers the job id."""
    arq = ArqRedis(connection_pool=redis.connection_pool)
    job = await arq.enqueue_job(
        JOB_NAME,
        programme_id,
        _job_id=job_id or new_reassess_job_id(programme_id),
        _queue_name=QUEUE_NAME,
        _defer_until=defer_until,
        **job_context(),  # the request id, so the job's log lines carry it
    )
    assert job is not None  # the id is fresh, so arq never refuses it as a duplicate
    return job.job_id
