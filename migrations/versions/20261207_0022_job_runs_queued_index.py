"""job_runs: a partial index on the runs still queued (the lost-job sweep reads them each minute)

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_job_runs_queued ON job_runs (created_at) WHERE status = 'queued'")


def downgrade() -> None:
    op.drop_index("ix_job_runs_queued", table_name="job_runs")
