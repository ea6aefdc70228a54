"""Thin HTTP routes of imports. An upload is the raw CSV file as the body (Content-Type:
text/csv), streamed into import_rows as it arrives; the answer is 202 with the import's id and
its Location, and the job does the rest."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.fields import Code
from loyalty.http.edge import PathId
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, WRITE
from loyalty.imports import core, service, tasks
from loyalty.imports.schemas import ImportPage, ImportView

CSV = "text/csv"
# The edge accepts this body type on these routes instead of JSON (edge.EdgeChecks).
CSV_BODY = {"body_media_type": CSV}
Filename = Annotated[
    str | None,
    QueryParameter(max_length=255, description="The file's name, kept for people to recognise it."),
]


class ImportController(Controller):
    path = "/v1/imports"
    tags = ["imports"]
    guards = [allow("operator")]

    async def _upload(
        self,
        request: Request,
        tx: AsyncConnection,
        who: Principal,
        kind: core.Kind,
        budget: str | None,
        filename: str | None,
    ) -> Response[ImportView]:
        created = await service.create_import(
            tx, who, kind=kind, chunks=request.stream(), budget=budget, filename=filename
        )
        # Queued before the commit, so that a Redis outage fails the upload instead of leaving
        # it waiting; the job retries until this transaction's rows are visible.
        await tasks.enqueue_import(request.app.state.redis, import_id=created.id)
        return Response(created, status_code=202, headers={"Location": created.status_url})

    @post("/members", dependencies=WRITE, status_code=202, opt=CSV_BODY)
    async def members(
        self,
        request: Request,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        filename: Filename = None,
    ) -> Response[ImportView]:
        """Import members from a CSV body (text/csv): columns member_id (required), status,
        attributes (a JSON object), tags (separated by ';') and attributes.<key>. Each row
        creates the member or merges into it."""
        return await self._upload(request, tx, who, "members", None, filename)

    @post("/points", dependencies=WRITE, status_code=202, opt=CSV_BODY)
    async def points(
        self,
        request: Request,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        budget: Annotated[Code, QueryParameter(description="The budget every row is granted from.")],
        filename: Filename = None,
    ) -> Response[ImportView]:
        """Grant points from a CSV body (text/csv): columns member_id, points, reference
        (required; a reference is granted once per programme) and reason."""
        return await self._upload(request, tx, who, "points", budget, filename)

    @get("/", dependencies=READ)
    async def list(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        before: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> ImportPage:
        """This programme's imports, newest first."""
        return await service.list_imports(tx, who, before=before, limit=limit)

    @get("/{import_id:int}", dependencies=READ)
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], import_id: PathId
    ) -> ImportView:
        """Status (queued, running, succeeded, failed), rows total / done / applied / unchanged /
        rejected, and progress in percent."""
        return await service.get_import(tx, who, import_id)

    @get("/{import_id:int}/errors.csv", dependencies=READ, media_type=CSV)
    async def errors(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], import_id: PathId
    ) -> Response[bytes]:
        """The rejected rows: line, error_field, error_reason, error_code, then the row as uploaded."""
        body = await service.error_report(tx, who, import_id)
        return Response(
            body,
            media_type=f"{CSV}; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
        )

    @post("/{import_id:int}/resume", dependencies=WRITE, status_code=202)
    async def resume(
        self,
        request: Request,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        import_id: PathId,
    ) -> Response[ImportView]:
        """Queue a failed import again: it goes on from its first row not yet done."""
        resumed = await service.resume_import(tx, who, import_id)
        await tasks.enqueue_import(request.app.state.redis, import_id=import_id)
        return Response(resumed, status_code=202, headers={"Location": resumed.status_url})


def build_routes(max_body_bytes: int) -> list[type[Controller]]:
    """The import routes with their own body limit (settings.import_max_bytes), far above the
    limit of every other route."""
    controller = type("ImportController", (ImportController,), {"request_max_body_size": max_body_bytes})
    return [controller]
