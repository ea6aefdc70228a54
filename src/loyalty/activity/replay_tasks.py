"""The replay job for the arq worker: runs the replay in a READ ONLY transaction of its own and
commits its progress in short transactions beside it, so that GET .../replay/{id} sees it."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import msgspec
from arq.connections import ArqRedis
from redis.asyncio import Redis

from loyalty.activity import replay
from loyalty.auth.core import Principal
from loyalty.jobs import repository as job_runs
from loyalty.jobs import runs
from loyalty.observability.metrics import job_context

log = logging.getLogger("loyalty.activity.replay")
JOB_NAME = "replay_earning_rules"
QUEUE_NAME = "loyalty:queue"  # worker.py's queue_name


def new_job_id(programme_id: int) -> str:
    return f"rules-replay:{programme_id}:{uuid.uuid4().hex[:12]}"


async def execute(engine: Any, *, job_id: str | None, who: Principal, req: replay.ReplayIn) -> dict[str, Any]:
    async def progress(done: int, total: int) -> None:
        if job_id is None:
            return
        percent = 100 if total == 0 else min(100, done * 100 // total)
        async with engine.begin() as conn:
            await job_runs.record_progress(
                conn, job_id=job_id, progress={"done": done, "total": total, "percent": percent}
            )

    async with engine.connect() as conn, conn.begin():
        result = await replay.run_replay(conn, who, req, progress=progress)
    out: dict[str, Any] = msgspec.to_builtins(result)
    out["progress"] = {"done": result.events, "total": result.events, "percent": 100}
    return out


async def replay_earning_rules(
    ctx: dict[str, Any], principal: dict[str, Any], request: dict[str, Any]
) -> dict[str, Any]:
    """arq job: the replay of a draft rule set; its run and result are kept in job_runs."""
    engine = ctx["engine"]
    who = Principal(**principal)
    req = msgspec.convert(request, replay.ReplayIn)
    async with runs.recorded(
        engine, job_id=ctx.get("job_id"), programme_id=who.programme_id, name=JOB_NAME
    ) as run:
        run.result = await execute(engine, job_id=ctx.get("job_id"), who=who, req=req)
        log.info("replayed %d events of programme %d", run.result["events"], who.programme_id)
    return run.result


async def enqueue(redis: Redis, *, who: Principal, req: replay.ReplayIn, job_id: str) -> str:
    arq = ArqRedis(connection_pool=redis.connection_pool)
    principal = {
        "programme_id": who.programme_id,
        "programme_code": who.programme_code,
        "role": who.role,
        "key_id": who.key_id,
        "timezone": who.timezone,
    }
    job = await arq.enqueue_job(
        JOB_NAME,
        principal,
        msgspec.to_builtins(req),
        _job_id=job_id,
        _queue_name=QUEUE_NAME,
        **job_context(),
    )
    assert job is not None
    return job.job_id
