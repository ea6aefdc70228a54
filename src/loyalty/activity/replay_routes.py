"""Thin routes of the earning-rule replay: validate and queue (202), then read the job."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import replay, replay_tasks
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, WRITE


class ReplayQueued(msgspec.Struct, kw_only=True):
    job_id: str
    status_url: str


ReplayView = replay_tasks.ReplayView  # the answer of GET .../replay/{job_id}


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
        job_id = await replay_tasks.start(tx, request.app.state.redis, who, data)
        url = f"/v1/earning-rules/replay/{job_id}"
        return Response(
            ReplayQueued(job_id=job_id, status_url=url), status_code=202, headers={"Location": url}
        )

    @get("/{job_id:str}", dependencies=READ)
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], job_id: FromPath[str]
    ) -> ReplayView:
        return await replay_tasks.status(tx, who, job_id)
