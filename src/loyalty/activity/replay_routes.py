"""Thin routes of the earning-rule replay: validate and queue (202), then read the job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import replay, replay_tasks
from loyalty.auth.core import Principal
from loyalty.errors import NotFound
from loyalty.jobs import repository as job_runs
from loyalty.ledger.routes import READ, WRITE
from loyalty.web import allow


class ReplayQueued(msgspec.Struct, kw_only=True):
    job_id: str
    status_url: str


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


class ReplayController(Controller):
    path = "/v1/earning-rules/replay"
    tags = ["earning rules"]
    guards = [allow("operator")]

    @post("/", dependencies=WRITE, status_code=202)
    async def start(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[replay.ReplayIn],
        request: Request[Any, Any, Any],
    ) -> Response[ReplayQueued]:
        """Replay a draft rule set over a past period's events, in the background; nothing is
        written. The draft is validated here (422 naming rules[i].field). Progress and result:
        GET the Location."""
        await replay.validate(tx, who, data)
        job_id = replay_tasks.new_job_id(who.programme_id)
        await job_runs.record_queued(
            tx, job_id=job_id, programme_id=who.programme_id, name=replay_tasks.JOB_NAME, run_at=None
        )
        await replay_tasks.enqueue(request.app.state.redis, who=who, req=data, job_id=job_id)
        url = f"/v1/earning-rules/replay/{job_id}"
        return Response(
            ReplayQueued(job_id=job_id, status_url=url), status_code=202, headers={"Location": url}
        )

    @get("/{job_id:str}", dependencies=READ)
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], job_id: FromPath[str]
    ) -> ReplayView:
        row = await job_runs.get(tx, programme_id=who.programme_id, job_id=job_id)
        if row is None or row["name"] != replay_tasks.JOB_NAME:
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
