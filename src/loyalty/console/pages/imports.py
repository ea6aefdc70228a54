"""Imports and exports: CSV uploads of members and of point grants, run by the worker with a
progress bar, their error reports, and the period's transactions as a streamed CSV.

Both kinds of import need the ``budgets`` permission (marketer, admin): a points file spends a
budget, and a members file creates accounts in bulk, which is no task for analysts or support.
The export needs ``export`` (every role)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath
from litestar.response import Stream, Template

from loyalty.console.web import (
    NavEntry,
    current,
    errors_of,
    is_htmx,
    needs,
    reading,
    render,
    see_other,
    transaction,
)
from loyalty.errors import DomainError, InvalidInput
from loyalty.imports import service, tasks
from loyalty.imports.schemas import ImportView
from loyalty.ledger import service as ledger
from loyalty.reports import service as reports

PAGE = 20
CHUNK = 64 * 1024
# The edge refuses larger bodies before anything is read; within it, the deployment's
# LOYALTY_IMPORT_MAX_BYTES is checked on each upload (the settings are known only at run time).
UPLOAD_CEILING = 1024 * 1024 * 1024
DONE = ("succeeded", "failed")


async def _page(request: Request[Any, Any, Any], *, status_code: int = 200, **context: Any) -> Template:
    who = current(request).principal()
    before = request.query_params.get("before")
    async with reading(request) as conn:
        imports = await service.list_imports(
            conn, who, before=int(before) if before and before.isdigit() else None, limit=PAGE
        )
        budgets = [b for b in await ledger.list_budgets(conn, who) if b.status != "closed"]
    return render(
        request,
        "imports/list.html",
        status_code=status_code,
        imports=imports,
        budgets=budgets,
        errors=context.pop("errors", {}),
        values=context.pop("values", {}),
        **context,
    )


@get("/imports", name="console-imports")
async def imports_page(request: Request[Any, Any, Any]) -> Template:
    return await _page(request)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


@post(
    "/imports",
    opt=needs("budgets"),
    request_max_body_size=UPLOAD_CEILING,
    name="console-imports-upload",
)
async def upload(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await request.form()
    kind = str(form.get("kind") or "")
    budget = str(form.get("budget") or "") or None
    values = {"kind": kind, "budget": budget or ""}
    field = f"file_{kind}" if kind in ("members", "points") else "kind"
    file = form.get(field)
    limit = request.app.state.settings.import_max_bytes
    try:
        if kind not in ("members", "points"):
            raise InvalidInput("kind", "must be members or points")
        if not isinstance(file, UploadFile) or not file.filename:
            raise InvalidInput(field, "choose a CSV file to upload")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise InvalidInput(field, f"is larger than {limit} bytes (LOYALTY_IMPORT_MAX_BYTES)")
        async with transaction(request) as conn:
            created = await service.create_import(
                conn,
                current(request).principal(),
                kind=kind,  # type: ignore[arg-type]
                chunks=_chunks(file),
                budget=budget if kind == "points" else None,
                filename=file.filename[:255],
            )
            # Queued before the commit, as the API does: a Redis outage fails the upload.
            await tasks.enqueue_import(request.app.state.redis, import_id=created.id)
    except DomainError as exc:
        errors = errors_of(exc)
        # A file's problems (its header, its encoding) belong next to that form's file input.
        shown = {(k if k in ("kind", "budget") else field): v for k, v in errors.items()}
        if exc.code == "budget_not_found":
            shown = {"budget": exc.detail}
        if any(k.startswith("header.") for k in errors):
            shown[field] = "; ".join(f"{k.removeprefix('header.')}: {v}" for k, v in errors.items())
        return await _page(request, status_code=400, errors=shown, values=values)
    return see_other(request, f"/console/imports/{created.id}")


async def _one(request: Request[Any, Any, Any], import_id: FromPath[int]) -> ImportView:
    async with reading(request) as conn:
        return await service.get_import(conn, current(request).principal(), import_id)


@get("/imports/{import_id:int}", name="console-import")
async def show(request: Request[Any, Any, Any], import_id: FromPath[int]) -> Template:
    found = await _one(request, import_id)
    template = "imports/_progress.html" if is_htmx(request) else "imports/show.html"
    return render(request, template, item=found, done=found.status in DONE)


@get("/imports/{import_id:int}/errors.csv", name="console-import-errors")
async def errors_csv(request: Request[Any, Any, Any], import_id: FromPath[int]) -> Response[bytes]:
    async with reading(request) as conn:
        body = await service.error_report(conn, current(request).principal(), import_id)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
    )


@post("/imports/{import_id:int}/resume", opt=needs("budgets"), name="console-import-resume")
async def resume(request: Request[Any, Any, Any], import_id: FromPath[int]) -> Response[Any]:
    async with transaction(request) as conn:
        await service.resume_import(conn, current(request).principal(), import_id)
        await tasks.enqueue_import(request.app.state.redis, import_id=import_id)
    return see_other(request, f"/console/imports/{import_id}")


def _day(values: Any, name: str) -> date | None:
    raw = values.get(name) or ""
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(name, "must be a date (YYYY-MM-DD)") from None


@get("/exports/transactions.csv", opt=needs("export"), name="console-export-transactions")
async def export_transactions(request: Request[Any, Any, Any]) -> Response[Any]:
    """The period's transactions, streamed from one snapshot: finance's file."""
    params = request.query_params
    programme_id = current(request).programme_id
    try:
        since, until = _day(params, "since"), _day(params, "until")
        async with reading(request) as conn:
            first, last = await reports.export_period(conn, programme_id, since, until)
    except DomainError as exc:
        values = {"since": params.get("since", ""), "until": params.get("until", "")}
        return await _page(request, status_code=400, errors=errors_of(exc), values=values)
    return Stream(
        reports.export_transactions(request.app.state.engine, programme_id, first, last),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="transactions-{first.isoformat()}-{last.isoformat()}.csv"'
        },
    )


ROUTES = [imports_page, upload, show, errors_csv, resume, export_transactions]
NAV = [NavEntry("Imports", "/console/imports", order=70)]
