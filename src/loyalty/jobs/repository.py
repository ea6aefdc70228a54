"""All SQL of job_runs. A run is written by the request that queued it and by the worker that
runs it, in either order (the worker may start before the request commits): every write is an
upsert on the job id."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.jobs.models import JobRun

runs = cast(Table, JobRun.__table__)


async def record_queued(
    conn: AsyncConnection, *, job_id: str, programme_id: int, name: str, run_at: datetime | None
) -> None:
    """The request's row. A worker that already started the job keeps its own (newer) state."""
    await conn.execute(
        pg_insert(runs)
        .values(job_id=job_id, programme_id=programme_id, name=name, status="queued", run_at=run_at)
        .on_conflict_do_nothing(index_elements=[runs.c.job_id])
    )


async def record_started(conn: AsyncConnection, *, job_id: str, programme_id: int, name: str) -> None:
    now = func.now()
    await conn.execute(
        pg_insert(runs)
        .values(
            job_id=job_id, programme_id=programme_id, name=name, status="running", attempts=1, started_at=now
        )
        .on_conflict_do_update(
            index_elements=[runs.c.job_id],
            set_={
                "status": "running",
                "attempts": runs.c.attempts + 1,
                "started_at": now,
                "finished_at": None,
                "error": None,
                "result": None,
            },
        )
    )


async def record_finished(
    conn: AsyncConnection, *, job_id: str, status: str, result: dict[str, Any] | None, error: str | None
) -> None:
    await conn.execute(
        runs.update()
        .where(runs.c.job_id == job_id)
        .values(status=status, result=result, error=error, finished_at=func.now())
    )


async def get(conn: AsyncConnection, *, programme_id: int, job_id: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(select(runs).where(runs.c.job_id == job_id, runs.c.programme_id == programme_id))
    ).first()
    return None if row is None else dict(row._mapping)


async def record_progress(conn: AsyncConnection, *, job_id: str, progress: dict[str, Any]) -> None:
    """A running job's progress, in result until it finishes (record_finished replaces it)."""
    await conn.execute(
        runs.update()
        .where(runs.c.job_id == job_id, runs.c.status == "running")
        .values(result={"progress": progress})
    )


async def queued_before(conn: AsyncConnection, age: timedelta) -> list[dict[str, Any]]:
    """Runs still queued that were due (created, or deferred to) longer than ``age`` ago."""
    due = func.coalesce(runs.c.run_at, runs.c.created_at)
    rows = await conn.execute(
        select(runs.c.job_id, runs.c.programme_id, runs.c.name)
        .where(runs.c.status == "queued", due < func.now() - age)
        .order_by(runs.c.created_at)
        .limit(1000)
    )
    return [dict(row._mapping) for row in rows]


async def record_lost(conn: AsyncConnection, *, job_id: str, error: str) -> bool:
    """Mark a queued run failed (not one a worker has started meanwhile); whether it was."""
    result = await conn.execute(
        runs.update()
        .where(runs.c.job_id == job_id, runs.c.status == "queued")
        .values(status="failed", error=error, finished_at=func.now())
    )
    return bool(result.rowcount)
