"""imports and import_rows: CSV uploads of members and point grants, applied by a job

Revision ID: 0017
Revises: 0016

An upload is stored row by row (import_rows), so that the job that applies it can commit in
batches and resume after a crash from the first row without an outcome. The functions that
apply a batch are the repeatable migration imports/sql/imports_v1.sql (loyalty.sql_files).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "imports",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("budget", sa.Text(), nullable=True),
        sa.Column("filename", sa.Text(), nullable=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("header", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("rows_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rows_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("applied", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unchanged", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rejected", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("kind IN ('members', 'points')", name=op.f("ck_imports_kind")),
        sa.CheckConstraint("kind <> 'points' OR budget IS NOT NULL", name=op.f("ck_imports_points_budget")),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_imports_programme_id_programmes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imports")),
        sa.UniqueConstraint("job_id", name=op.f("uq_imports_job_id")),
    )
    op.create_index("ix_imports_programme_created", "imports", ["programme_id", "created_at"])
    op.create_table(
        "import_rows",
        sa.Column("import_id", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("cells", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("field", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('applied', 'unchanged', 'rejected')", name=op.f("ck_import_rows_outcome")
        ),
        sa.ForeignKeyConstraint(
            ["import_id"], ["imports.id"], name=op.f("fk_import_rows_import_id_imports"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("import_id", "line", name=op.f("pk_import_rows")),
    )
    op.create_index(
        "ix_import_rows_pending",
        "import_rows",
        ["import_id", "line"],
        postgresql_where=sa.text("outcome IS NULL"),
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS import_apply_points(bigint, text, text, int[], text[], bytea[], text[], bigint[], text[], text[])"
    )
    op.execute("DROP FUNCTION IF EXISTS import_apply_members(bigint, int[], text[], jsonb[], text[])")
    op.drop_index("ix_import_rows_pending", table_name="import_rows")
    op.drop_table("import_rows")
    op.drop_index("ix_imports_programme_created", table_name="imports")
    op.drop_table("imports")
