"""job_runs: the outcome of operator-requested background jobs, kept in PostgreSQL

Revision ID: 0014
Revises: 0013

arq keeps a job's result in Redis for a while only, and loses it with Redis; a row here keeps
queued / running / succeeded (with the job's result) / failed (with a short error) for as long
as the operator may ask (GET /v1/jobs/{job_id}).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name=op.f("ck_job_runs_status")
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_runs")),
    )
    op.create_index("ix_job_runs_programme_created", "job_runs", ["programme_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_job_runs_programme_created", table_name="job_runs")
    op.drop_table("job_runs")
