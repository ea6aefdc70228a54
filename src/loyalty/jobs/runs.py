"""Recording a job's run from inside the worker: running when it starts, then succeeded with its
result or failed with a one-line error. Each write is its own short transaction, apart from the
job's work, so that a job that fails still leaves its failure behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.jobs import repository

ERROR_MAX = 300


def short_error(exc: BaseException) -> str:
    """The exception's type and the first line of its message, bounded; no traceback, no frames."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled: the job timed out or its worker stopped"
    message = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"


@dataclass(slots=True)
class Run:
    result: dict[str, Any] | None = field(default=None)


@asynccontextmanager
async def recorded(
    engine: AsyncEngine, *, job_id: str | None, programme_id: int, name: str
) -> AsyncIterator[Run]:
    """Wraps a job's body. Without a job id (the job called directly, not by arq) nothing is
    recorded. The exception is re-raised, so that arq too counts the job as failed."""
    run = Run()
    if job_id is None:
        yield run
        return
    async with engine.begin() as conn:
        await repository.record_started(conn, job_id=job_id, programme_id=programme_id, name=name)
    try:
        yield run
    except BaseException as exc:
        error = short_error(exc)

        async def record_failure() -> None:
            async with engine.begin() as conn:
                await repository.record_finished(
                    conn, job_id=job_id, status="failed", result=None, error=error
                )

        # A cancelled job (timeout, shutdown) still records why; shielded from that cancellation.
        await asyncio.shield(record_failure())
        raise
    async with engine.begin() as conn:
        await repository.record_finished(
            conn, job_id=job_id, status="succeeded", result=run.result, error=None
        )
