"""The import job: applies an import's stored rows in batches, one transaction per batch, each
row in its own savepoint (imports/sql/imports_v1.sql). A batch's grants and the rows' outcomes
commit together, so a job stopped anywhere resumes from the first row without an outcome and
applies no row twice; point rows carry their own ledger idempotency key besides.

Its run is the import's job_runs row (queued / running / succeeded / failed). A job that runs
longer than one slice queues its own continuation, so that no single arq job nears the
worker's job timeout, whatever the file's size."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from arq import Retry
from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.errors import InvalidInput
from loyalty.imports import core, repository
from loyalty.imports.schemas import ImportResult
from loyalty.imports.service import JOB_NAME
from loyalty.jobs import repository as job_runs
from loyalty.jobs.runs import short_error
from loyalty.ledger.errors import ledger_error
from loyalty.members.service import _attributes_json as attributes_json  # the API's own limits
from loyalty.observability.metrics import job_context

log = logging.getLogger("loyalty.imports.tasks")
QUEUE_NAME = "loyalty:queue"  # worker.py's queue_name
# Rows per transaction: large enough that a commit is rare, small enough that progress moves
# every fraction of a second and a batch holds its locks briefly.
BATCH = 500
# One arq job runs this long at most, then queues the rest (the worker's job_timeout is 300 s).
SLICE_SECONDS = 120.0
ProgressHook = Callable[[int, int], None]


class ImportNotFound(LookupError):
    pass


async def apply_import(
    engine: AsyncEngine,
    import_id: int,
    *,
    batch: int = BATCH,
    deadline: float | None = None,
    max_batches: int | None = None,
    progress: ProgressHook | None = None,
) -> ImportResult:
    """Apply the rows not yet done, until none is left (``finished``), the monotonic
    ``deadline`` passes or ``max_batches`` batches are committed. ``progress(done, total)`` is
    called after each commit. Safe to run twice, and at once on two workers."""
    started = time.perf_counter()
    async with engine.connect() as conn:
        current = await repository.load(conn, import_id)
    if current is None:
        raise ImportNotFound(import_id)
    kind, header = current["kind"], current["header"]
    actor = f"{current['actor']}/import:{import_id}"
    if kind == "points":
        async with engine.begin() as conn:
            await repository.reject_repeated_references(conn, import_id, header.index("reference"))
    batches = 0
    finished = False
    while max_batches is None or batches < max_batches:
        async with engine.begin() as conn:
            rows = await repository.next_rows(conn, import_id, batch)
            if not rows:
                finished = True
                break
            if kind == "points":
                outcomes = await _apply_points(conn, current, actor, rows)
            else:
                outcomes = await _apply_members(conn, current, rows)
            await repository.record_outcomes(
                conn,
                import_id,
                lines=[line for line, *_ in outcomes],
                outcomes=[o[1] for o in outcomes],
                fields=[o[2] for o in outcomes],
                reasons=[o[3] for o in outcomes],
                codes=[o[4] for o in outcomes],
            )
            counts = {"applied": 0, "unchanged": 0, "rejected": 0}
            for _, outcome, *_rest in outcomes:
                counts[outcome] += 1
            await repository.add_progress(conn, import_id, **counts)
        batches += 1
        if progress is not None or deadline is not None:
            async with engine.connect() as conn:
                now = await repository.load(conn, import_id)
            if progress is not None and now is not None:
                progress(now["rows_done"], now["rows_total"])
        if deadline is not None and time.monotonic() >= deadline:
            break
    async with engine.connect() as conn:
        final = await repository.load(conn, import_id)
    assert final is not None
    if finished and progress is not None:
        progress(final["rows_done"], final["rows_total"])
    return ImportResult(
        import_id=import_id,
        rows_total=final["rows_total"],
        rows_done=final["rows_done"],
        applied=final["applied"],
        unchanged=final["unchanged"],
        rejected=final["rejected"],
        seconds=round(time.perf_counter() - started, 3),
        finished=finished,
    )


Outcome = tuple[int, str, str | None, str | None, str | None]  # line, outcome, field, reason, code


def _rejected(line: int, rejected: core.Rejected) -> Outcome:
    return (line, "rejected", rejected.field, rejected.reason, rejected.code)


def _refusal(line: int, code: str | None, detail: str | None) -> Outcome:
    """A ledger refusal, with the sentence the API answers for it."""
    code = code or "refused"
    reason = core.REASON_OVERRIDES.get(code) or ledger_error(code, detail).detail
    return (line, "rejected", core.LEDGER_FIELDS.get(code, "row"), reason, code)


async def _apply_points(
    conn: Any, current: dict[str, Any], actor: str, rows: list[tuple[int, list[str]]]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    valid: list[tuple[int, core.PointsRow]] = []
    for line, cells in rows:
        parsed = core.parse_points(current["header"], cells, current["budget"])
        if isinstance(parsed, core.Rejected):
            outcomes.append(_rejected(line, parsed))
        else:
            valid.append((line, parsed))
    if valid:
        results = await repository.apply_points(
            conn,
            programme_id=current["programme_id"],
            budget=current["budget"],
            actor=actor,
            lines=[line for line, _ in valid],
            keys=[r.key for _, r in valid],
            fingerprints=[r.fingerprint for _, r in valid],
            members=[r.member_id for _, r in valid],
            amounts=[r.points for _, r in valid],
            references=[r.reference for _, r in valid],
            reasons=[r.reason for _, r in valid],
        )
        for result in results:
            if result["outcome"] == "rejected":
                outcomes.append(_refusal(result["line"], result["code"], result["detail"]))
            else:
                outcomes.append((result["line"], result["outcome"], None, None, None))
    return outcomes


async def _apply_members(
    conn: Any, current: dict[str, Any], rows: list[tuple[int, list[str]]]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    valid: list[tuple[int, core.MemberRow, str]] = []
    for line, cells in rows:
        parsed = core.parse_member(current["header"], cells)
        if isinstance(parsed, core.Rejected):
            outcomes.append(_rejected(line, parsed))
            continue
        try:
            attributes = attributes_json(parsed.attributes) or "{}"
        except InvalidInput as exc:  # too many keys, too large
            outcomes.append(_rejected(line, core.Rejected(exc.field, exc.reason)))
            continue
        valid.append((line, parsed, attributes))
    if valid:
        results = await repository.apply_members(
            conn,
            programme_id=current["programme_id"],
            lines=[line for line, _, _ in valid],
            members=[r.member_id for _, r, _ in valid],
            attributes=[a for _, _, a in valid],
            statuses=[r.status for _, r, _ in valid],
        )
        for result in results:
            if result["outcome"] == "rejected":
                outcomes.append(_refusal(result["line"], result["code"], result["detail"]))
            else:
                outcomes.append((result["line"], result["outcome"], None, None, None))
    return outcomes


async def run_import(ctx: dict[str, Any], import_id: int, continued: bool = False) -> dict[str, Any]:
    """arq job. Queued by the upload before its transaction commits: an import not visible yet
    is retried shortly (and one whose upload rolled back is given up after arq's tries)."""
    engine: AsyncEngine = ctx["engine"]
    async with engine.connect() as conn:
        current = await repository.load(conn, import_id)
    if current is None:
        raise Retry(defer=1)
    job_id, programme_id = current["job_id"], current["programme_id"]
    if not continued:
        async with engine.begin() as conn:
            await job_runs.record_started(conn, job_id=job_id, programme_id=programme_id, name=JOB_NAME)
    try:
        result = await apply_import(engine, import_id, deadline=time.monotonic() + SLICE_SECONDS)
    except BaseException as exc:
        error = short_error(exc)

        async def record_failure() -> None:
            async with engine.begin() as conn:
                await job_runs.record_finished(conn, job_id=job_id, status="failed", result=None, error=error)

        await asyncio.shield(record_failure())
        raise
    if not result.finished:
        await enqueue_import(ctx["redis"], import_id=import_id, continued=True)
        log.info("import %d: %d of %d rows done, continuing", import_id, result.rows_done, result.rows_total)
        return result.as_dict()
    async with engine.begin() as conn:
        await job_runs.record_finished(
            conn, job_id=job_id, status="succeeded", result=result.as_dict(), error=None
        )
    log.info(
        "import %d: %d rows, %d applied, %d unchanged, %d rejected",
        import_id, result.rows_total, result.applied, result.unchanged, result.rejected,
    )  # fmt: skip
    return result.as_dict()


async def enqueue_import(redis: Redis, *, import_id: int, continued: bool = False) -> str:
    """Put the import's job on the worker's queue (a fresh arq id each time: a resumed import
    is queued again while arq may still keep the earlier job's result)."""
    arq = redis if isinstance(redis, ArqRedis) else ArqRedis(connection_pool=redis.connection_pool)
    job = await arq.enqueue_job(
        JOB_NAME,
        import_id,
        continued,
        _job_id=f"import:{import_id}:{uuid.uuid4().hex[:12]}",
        _queue_name=QUEUE_NAME,
        **job_context(),
    )
    assert job is not None  # the id is fresh, so arq never refuses it as a duplicate
    return job.job_id
