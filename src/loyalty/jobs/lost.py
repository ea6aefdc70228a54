"""Runs that the queue lost: a job recorded as queued whose arq job Redis no longer holds.

Redis keeps the queue; PostgreSQL keeps the record of each run a request started. If Redis loses
its data (a failover to a replica that had not caught up, a restart without persistence) the
record would say ``queued`` for ever. A worker cron looks for such runs: a job that can be
queued again from its record alone (a tier re-assessment names only its programme) is queued
again under the same id, which arq runs at most once; any other is marked failed, with an error
that tells the operator to start it again, so that the job's status never lies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.jobs import repository

log = logging.getLogger(__name__)

# Long enough that a request which recorded its run and then queued the job has done both.
LOST_AFTER = timedelta(minutes=2)
LOST_ERROR = "lost from the job queue (Redis lost its data before the job ran): start it again"

# Queues the run again under its own job id; given the Redis client and the run's record.
Requeue = Callable[[Any, Mapping[str, Any]], Awaitable[None]]


async def recover_lost_jobs(
    engine: AsyncEngine, redis: Any, requeue: Mapping[str, Requeue], *, older_than: timedelta = LOST_AFTER
) -> dict[str, int]:
    """Queue again, or mark failed, every run queued before ``older_than`` ago that arq knows
    nothing of (no job, no run in progress, no result); the counts of each."""
    async with engine.connect() as conn:
        queued = await repository.queued_before(conn, older_than)
    requeued = failed = 0
    for run in queued:
        keys = [
            prefix + run["job_id"] for prefix in (job_key_prefix, in_progress_key_prefix, result_key_prefix)
        ]
        if await redis.exists(*keys):
            continue
        again = requeue.get(run["name"])
        if again is not None:
            await again(redis, run)
            requeued += 1
            log.warning("job %s (%s) was lost from the queue: queued again", run["job_id"], run["name"])
            continue
        async with engine.begin() as conn:
            if await repository.record_lost(conn, job_id=run["job_id"], error=LOST_ERROR):
                failed += 1
                log.warning("job %s (%s) was lost from the queue: marked failed", run["job_id"], run["name"])
    return {"requeued": requeued, "failed": failed}
