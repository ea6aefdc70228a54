"""Thin HTTP routes of job runs."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ
from loyalty.jobs import service
from loyalty.jobs.schemas import JobView


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    guards = [allow("operator")]

    @get("/{job_id:str}", dependencies=READ)
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], job_id: FromPath[str]
    ) -> JobView:
        """A job this programme queued (e.g. POST /v1/tiers/reassess): queued, running, succeeded
        with its result, or failed with a short error."""
        return await service.get_job(tx, who, job_id)


ROUTES = [JobController]
