"""imports: one row per uploaded file; import_rows: its data rows, each with its outcome once
the job has applied (or rejected) it. The job's run itself is a job_runs row (jobs/)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base

KINDS = ("members", "points")
OUTCOMES = ("applied", "unchanged", "rejected")


class Import(Base):
    __tablename__ = "imports"
    __table_args__ = (
        CheckConstraint("kind IN ('members', 'points')", name="kind"),
        CheckConstraint("kind <> 'points' OR budget IS NOT NULL", name="points_budget"),
        Index("ix_imports_programme_created", "programme_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    programme_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)
    budget: Mapped[str | None] = mapped_column(Text, nullable=True)
    filename: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The job_runs row of this import's job (status, attempts, start, end, error).
    job_id: Mapped[str] = mapped_column(Text, unique=True)
    header: Mapped[list[str]] = mapped_column(ARRAY(Text))
    actor: Mapped[str] = mapped_column(Text)
    rows_total: Mapped[int] = mapped_column(Integer, server_default="0")
    rows_done: Mapped[int] = mapped_column(Integer, server_default="0")
    applied: Mapped[int] = mapped_column(Integer, server_default="0")
    unchanged: Mapped[int] = mapped_column(Integer, server_default="0")
    rejected: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ImportRow(Base):
    __tablename__ = "import_rows"
    __table_args__ = (
        CheckConstraint("outcome IN ('applied', 'unchanged', 'rejected')", name="outcome"),
        # The job's next batch: the rows of the import not yet done, in file order.
        Index("ix_import_rows_pending", "import_id", "line", postgresql_where="outcome IS NULL"),
    )

    import_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True
    )
    # The row's line in the file (the header is line 1).
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    cells: Mapped[list[str]] = mapped_column(ARRAY(Text))
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)
    field: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    code: Mapped[str | None] = mapped_column(Text, nullable=True)
