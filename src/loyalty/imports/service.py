"""Import use cases: store an upload (streamed, row by row), show an import's progress, its
error report, and resume one. Each takes the caller's connection and never commits; the job
that applies the rows is in tasks.py."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.errors import Conflict, InvalidInput, NotFound
from loyalty.http.principal import Principal
from loyalty.imports import core, repository
from loyalty.imports.schemas import ImportPage, ImportView
from loyalty.jobs import repository as job_runs
from loyalty.ledger import service as ledger

JOB_NAME = "run_import"
# Rows per INSERT while the upload streams in: a few hundred KiB held at a time.
STORE_BATCH = 2000
# Named so as not to meet a column of the file itself (a points file has a "reason").
ERRORS_HEADER = ["line", "error_field", "error_reason", "error_code"]


def new_job_id(programme_id: int) -> str:
    return f"import:{programme_id}:{uuid.uuid4().hex[:12]}"


async def create_import(
    conn: AsyncConnection,
    who: Principal,
    *,
    kind: core.Kind,
    chunks: AsyncIterable[bytes],
    budget: str | None = None,
    filename: str | None = None,
    actor: str | None = None,
) -> ImportView:
    """Check the header, store every data row, and record the job as queued. The caller
    commits, then queues the job (tasks.enqueue_import). A points import needs an existing
    budget; rows are checked one by one later, by the job, and refused rows reported."""
    if kind == "points":
        if not budget:
            raise InvalidInput("budget", "is required for a points import (?budget=CODE)")
        await ledger.get_budget(conn, who, budget)  # budget_not_found before any row is stored
    else:
        budget = None
    splitter = core.RecordSplitter()
    header: list[str] | None = None
    import_id = 0
    pending: list[tuple[int, list[str]]] = []
    total = 0
    job_id = new_job_id(who.programme_id)

    async def take(records: list[core.Record]) -> None:
        nonlocal header, import_id, total
        for record in records:
            if header is None:
                header = core.check_header(kind, record.cells)
                import_id = await repository.create(
                    conn,
                    programme_id=who.programme_id,
                    kind=kind,
                    budget=budget,
                    filename=filename,
                    job_id=job_id,
                    header=header,
                    actor=actor or who.actor,
                )
                continue
            pending.append((record.line, record.cells))
            total += 1
            if len(pending) >= STORE_BATCH:
                await repository.insert_rows(conn, import_id, pending)
                pending.clear()

    async for chunk in chunks:
        if chunk:
            await take(splitter.feed(chunk))
    await take(splitter.feed(b"", final=True))
    if header is None:
        raise InvalidInput("body", "is empty: the first line must be the header row")
    await repository.insert_rows(conn, import_id, pending)
    await repository.set_total(conn, import_id, total)
    await job_runs.record_queued(
        conn, job_id=job_id, programme_id=who.programme_id, name=JOB_NAME, run_at=None
    )
    created = await get_import(conn, who, import_id)
    # One row for the upload, not one per data row: the rows and their outcomes are the import's.
    await audit.record(
        conn,
        actor or who,
        action="import.create",
        entity="import",
        entity_id=import_id,
        after=_audited(created),
        programme_id=who.programme_id,
    )
    return created


def _audited(v: ImportView) -> dict[str, Any]:
    return {
        "kind": v.kind,
        "budget": v.budget,
        "filename": v.filename,
        "status": v.status,
        "rows_total": v.rows_total,
        "rows_done": v.rows_done,
        "job_id": v.job_id,
    }


def view(row: dict[str, Any]) -> ImportView:
    status = row["status"]
    done = row["rows_done"]
    return ImportView(
        id=row["id"],
        kind=row["kind"],
        budget=row["budget"],
        filename=row["filename"],
        status=status,
        rows_total=row["rows_total"],
        rows_done=done,
        applied=row["applied"],
        unchanged=row["unchanged"],
        rejected=row["rejected"],
        progress_percent=core.progress_percent(done, row["rows_total"]),
        attempts=row["attempts"],
        error=row["error"],
        job_id=row["job_id"],
        actor=row["actor"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        status_url=f"/v1/imports/{row['id']}",
        errors_url=f"/v1/imports/{row['id']}/errors.csv",
    )


def _not_found(import_id: int) -> NotFound:
    return NotFound(
        "No import with this id in the programme.", code="import_not_found", extra={"import_id": import_id}
    )


async def get_import(conn: AsyncConnection, who: Principal, import_id: int) -> ImportView:
    """An import of another programme is not found, as an unknown id is."""
    row = await repository.get(conn, who.programme_id, import_id)
    if row is None:
        raise _not_found(import_id)
    return view(row)


async def list_imports(
    conn: AsyncConnection, who: Principal, *, before: int | None = None, limit: int = 50
) -> ImportPage:
    """Newest first; ``next_cursor`` is the ``before`` of the next page."""
    rows = await repository.page(conn, who.programme_id, before, limit + 1)
    items = [view(r) for r in rows[:limit]]
    return ImportPage(items=items, next_cursor=items[-1].id if len(rows) > limit and items else None)


async def error_report(conn: AsyncConnection, who: Principal, import_id: int) -> bytes:
    """The rejected rows as CSV: line, field, reason, code, then the row's own cells under the
    file's header, so that the file can be corrected and uploaded again."""
    row = await repository.get(conn, who.programme_id, import_id)
    if row is None:
        raise _not_found(import_id)
    return render_errors(row["header"], await repository.rejected_rows(conn, import_id))


def render_errors(header: list[str], rows: list[tuple[int, str, str, str, list[str]]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*ERRORS_HEADER, *header])
    for line, field, reason, code, cells in rows:
        writer.writerow([line, field, reason, code, *cells])
    return out.getvalue().encode()


async def resume_import(conn: AsyncConnection, who: Principal, import_id: int) -> ImportView:
    """Queue a failed (or stalled) import again: its job goes on from the first row without an
    outcome. The caller commits, then queues the job."""
    current = await get_import(conn, who, import_id)
    if current.status == "succeeded":
        raise Conflict("The import has finished.", code="import_finished", extra={"import_id": import_id})
    await repository.mark_queued(conn, current.job_id)
    resumed = await get_import(conn, who, import_id)
    await audit.record(
        conn,
        who,
        action="import.resume",
        entity="import",
        entity_id=import_id,
        before=_audited(current),
        after=_audited(resumed),
    )
    return resumed
