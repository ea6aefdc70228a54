"""Use cases of job runs: the operator's view of one job of their programme."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.errors import NotFound
from loyalty.http.principal import Principal
from loyalty.jobs import repository
from loyalty.jobs.schemas import JobView


async def get_job(conn: AsyncConnection, who: Principal, job_id: str) -> JobView:
    """A job of another programme is not found, as an unknown id is."""
    row = await repository.get(conn, programme_id=who.programme_id, job_id=job_id)
    if row is None:
        raise NotFound(f"no job {job_id!r}", extra={"job_id": job_id})
    return JobView(
        job_id=row["job_id"],
        name=row["name"],
        status=row["status"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        run_at=row["run_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result=row["result"],
        error=row["error"],
    )
