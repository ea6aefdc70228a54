"""Thin HTTP routes of tiers: ladder versions (operator), a member's tier, pins, the customer's view."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, Request, Response, delete, get, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.http.edge import PathVersion
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, STAFF_READ, WRITE
from loyalty.jobs import repository as job_runs
from loyalty.tiers import schemas as s
from loyalty.tiers import service, tasks

OPERATOR = allow("operator")


class TierVersionController(Controller):
    path = "/v1/tiers/versions"
    tags = ["tiers"]
    guards = [OPERATOR]

    @post("/", dependencies=WRITE, status_code=201)
    async def create(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.LadderCreate],
    ) -> s.VersionView:
        """A draft ladder: tiers with their entry and retention rules, validity, policy, grace, bonus."""
        return await service.create_version(tx, who, data)

    @get("/", dependencies=READ)
    async def list(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.VersionList:
        return await service.list_versions(tx, who)

    @get("/{version:int}", dependencies=READ)
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], version: PathVersion
    ) -> s.VersionView:
        return await service.get_version(tx, who, version)

    @post("/{version:int}/backtest", dependencies=READ, status_code=200)
    async def backtest(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], version: PathVersion
    ) -> s.BacktestView:
        """Dry run: who would move up, down or stay under this version. Nothing is written."""
        return await service.backtest(tx, who, version)

    @post("/{version:int}/publish", dependencies=WRITE, status_code=200)
    async def publish(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        version: PathVersion,
        data: JSONBody[s.PublishRequest],
        request: Request,
    ) -> Response[s.VersionView]:
        """The draft becomes the ladder from effective_at (default now); the previous one is superseded.
        With ``"reassess": true`` every member is re-assessed against it once it is in force."""
        view = await service.publish(tx, who, version, data)
        if not data.reassess:
            return Response(view)
        # A background task runs after the response is sent, i.e. after the request's
        # transaction committed (a failed commit answers 5xx and drops it).
        defer = view.effective_at if view.effective_at and view.effective_at > datetime.now(UTC) else None
        job = BackgroundTask(
            tasks.enqueue_reassess, request.app.state.redis, programme_id=who.programme_id, defer_until=defer
        )
        return Response(view, background=job)


class TierJobController(Controller):
    path = "/v1/tiers"
    tags = ["tiers"]
    guards = [OPERATOR]

    @post("/reassess", dependencies=WRITE, status_code=202)
    async def reassess(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], request: Request
    ) -> Response[s.ReassessQueued]:
        """Queue a full re-evaluation of every member against the ladder in force (the worker
        runs it set-based, in slices). Its outcome: GET /v1/jobs/{job_id} (the Location)."""
        job_id = tasks.new_reassess_job_id(who.programme_id)
        # The queued row first, then the job: if Redis refuses it, the row rolls back with the
        # request. The worker upserts the same row, so it may start before this commit.
        await job_runs.record_queued(
            tx, job_id=job_id, programme_id=who.programme_id, name=tasks.JOB_NAME, run_at=None
        )
        await audit.record(tx, who, action="tier_ladder.reassess", entity="job", entity_id=job_id)
        await tasks.enqueue_reassess(request.app.state.redis, programme_id=who.programme_id, job_id=job_id)
        return Response(
            s.ReassessQueued(job_id=job_id, status_url=f"/v1/jobs/{job_id}"),
            status_code=202,
            headers={"Location": f"/v1/jobs/{job_id}"},
        )


class MemberTierController(Controller):
    path = "/v1/members/{member_id:str}/tier"
    tags = ["tiers"]

    @get("/", dependencies=READ, guards=[STAFF_READ])
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], member_id: FromPath[str]
    ) -> s.MemberTierView:
        """The tier, its dates and pin; what the next tier takes and what keeps this one."""
        return await service.member_tier(tx, who, member_id)

    @get("/history", dependencies=READ, guards=[STAFF_READ])
    async def history(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> s.HistoryPage:
        return await service.history(tx, who, member_id, limit)

    @post("/assess", dependencies=WRITE, guards=[OPERATOR], status_code=200)
    async def assess(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], member_id: FromPath[str]
    ) -> s.MemberTierView:
        """Assess now, as an event does: promotes if an entry rule is met, never demotes."""
        return await service.assess(tx, who, member_id)

    @post("/pin", dependencies=WRITE, guards=[OPERATOR], status_code=200)
    async def pin(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        data: JSONBody[s.PinRequest],
    ) -> s.MemberTierView:
        return await service.pin(tx, who, member_id, data)

    @delete("/pin", dependencies=WRITE, guards=[OPERATOR], status_code=200)
    async def unpin(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        data: JSONBody[s.UnpinRequest],
    ) -> s.MemberTierView:
        return await service.unpin(tx, who, member_id, data)


class MyTierController(Controller):
    path = "/v1/me/tier"
    tags = ["customer"]
    guards = [allow("member")]

    @get("/", dependencies=READ)
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.MyTierView:
        return await service.my_tier(tx, who)


ROUTES = [TierVersionController, TierJobController, MemberTierController, MyTierController]
