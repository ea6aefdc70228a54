"""The API edge of job runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

JobStatus = Literal["queued", "running", "succeeded", "failed"]


class JobView(msgspec.Struct, kw_only=True):
    job_id: str
    name: str
    status: JobStatus
    attempts: int
    created_at: datetime
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The job's own answer once it succeeded (for a tier re-evaluation: members, changed, seconds).
    result: dict[str, Any] | None = None
    # One line, the exception's type and message; never a traceback.
    error: str | None = None
