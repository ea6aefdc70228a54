"""Thin routes of the audit trail: a filtered, paged read and a streamed CSV export."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.audit import core, service
from loyalty.audit import schemas as s
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ

Since = Annotated[datetime | None, QueryParameter(description="Rows at or after this time (with offset).")]
Until = Annotated[datetime | None, QueryParameter(description="Rows before this time (with offset).")]
ActorQuery = Annotated[
    str | None, QueryParameter(max_length=200, description="e.g. key:12:operator or operator:3")
]
ActionQuery = Annotated[
    str | None,
    QueryParameter(max_length=100, description="An action, or every action of a subject: budget.*"),
]
EntityQuery = Annotated[str | None, QueryParameter(max_length=63, description="e.g. member, budget")]
EntityIdQuery = Annotated[str | None, QueryParameter(max_length=200, description="Needs entity.")]


class AuditController(Controller):
    path = "/v1"
    tags = ["audit"]
    guards = [allow("operator")]
    dependencies = READ

    @get("/audit")
    async def list(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since = None,
        until: Until = None,
        actor: ActorQuery = None,
        action: ActionQuery = None,
        entity: EntityQuery = None,
        entity_id: EntityIdQuery = None,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=service.MAX_LIMIT)] = service.DEFAULT_LIMIT,
    ) -> s.AuditPage:
        """Who changed what and when, newest first, with before, after and the reason."""
        f = core.Filter(
            since=since, until=until, actor=actor, action=action, entity=entity, entity_id=entity_id
        )
        return await service.list_entries(tx, who.programme_id, f, cursor, limit)

    @get("/audit.csv", media_type="text/csv")
    async def export(
        self,
        request: Request,
        who: NamedDependency[Principal],
        since: Since = None,
        until: Until = None,
        actor: ActorQuery = None,
        action: ActionQuery = None,
        entity: EntityQuery = None,
        entity_id: EntityIdQuery = None,
    ) -> Stream:
        """The same rows as CSV, streamed from one snapshot however many there are."""
        f = core.Filter(
            since=since, until=until, actor=actor, action=action, entity=entity, entity_id=entity_id
        ).check()
        return Stream(
            service.export_csv(request.app.state.engine, who.programme_id, f),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="audit-{who.programme_code}.csv"'},
        )


ROUTES = [AuditController]
