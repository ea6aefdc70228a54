"""The API edge of imports: what an upload answers, an import's progress, and a row's checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from loyalty.fields import ExternalId, Strict
from loyalty.jobs.schemas import JobStatus
from loyalty.members.schemas import Attributes


class MemberRowIn(Strict, kw_only=True):
    """One members row, checked as POST /v1/members and PATCH /v1/members/{id} check theirs."""

    member_id: ExternalId
    attributes: Attributes = {}
    status: Literal["active", "suspended", "closed"] | None = None


class ImportView(msgspec.Struct, kw_only=True):
    id: int
    kind: Literal["members", "points"]
    # points imports: the budget every row is granted from.
    budget: str | None
    filename: str | None
    # queued -> running -> succeeded | failed (a failed import resumes: POST .../resume).
    status: JobStatus
    rows_total: int
    # Rows with an outcome: applied + unchanged + rejected.
    rows_done: int
    # Rows written: members created or changed, points granted.
    applied: int
    # Rows that changed nothing: a member already as the row says, or a grant already made by an
    # earlier upload of the same reference (it is not granted twice).
    unchanged: int
    rejected: int
    # Whole percent of rows_done over rows_total; 100 only when every row is done.
    progress_percent: int
    attempts: int
    # One line, when the job failed; the rows done so far stay done.
    error: str | None
    job_id: str
    actor: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    status_url: str
    errors_url: str


class ImportPage(msgspec.Struct):
    items: list[ImportView]
    next_cursor: int | None


class ImportResult(msgspec.Struct, kw_only=True):
    """A job run's result (job_runs.result), and the CLI's summary."""

    import_id: int
    rows_total: int
    rows_done: int
    applied: int
    unchanged: int
    rejected: int
    seconds: float
    finished: bool

    def as_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)
