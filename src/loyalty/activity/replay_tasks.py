"""The replay job for the arq worker: runs the replay in a READ ONLY transaction of its own and
commits its progress in short transactions beside it, so that GET .../replay/{id} sees it."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import msgspec
from arq.connections import ArqRedis
from redis.asyncio import Redis

from loyalty.activity import replay
from loyalty.errors import NotFound
from loyalty.http.principal import Principal
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


class ReplayView(msgspec.Struct, kw_only=True):
    job_id: str
    status: str  # queued, running, succeeded, failed
    percent: int  # rows done / total, 0..100
    done: int
    total: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: dict[str, Any] | None = None  # replay.ReplayResult once succeeded


async def start(conn: Any, redis: Redis, who: Principal, req: replay.ReplayIn) -> str:
    """Validate the draft (InvalidInput naming rules[i].field), record the run as queued in the
    caller's transaction and queue it for the worker; the job's id."""
    await replay.validate(conn, who, req)
    job_id = new_job_id(who.programme_id)
    await job_runs.record_queued(
        conn, job_id=job_id, programme_id=who.programme_id, name=JOB_NAME, run_at=None
    )
    await enqueue(redis, who=who, req=req, job_id=job_id)
    return job_id


async def status(conn: Any, who: Principal, job_id: str) -> ReplayView:
    """A replay's progress, and its result once it succeeded."""
    row = await job_runs.get(conn, programme_id=who.programme_id, job_id=job_id)
    if row is None or row["name"] != JOB_NAME:
        raise NotFound(f"no replay {job_id!r}", code="replay_not_found", extra={"job_id": job_id})
    result = row["result"] or {}
    progress = result.get("progress") or {}
    done_ok = row["status"] == "succeeded"
    return ReplayView(
        job_id=job_id,
        status=row["status"],
        percent=100 if done_ok else int(progress.get("percent", 0)),
        done=int(progress.get("done", 0)),
        total=int(progress.get("total", 0)),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        result={k: v for k, v in result.items() if k != "progress"} if done_ok else None,
    )
