"""audit_log: one append-only row per change an operator or an API key made, written in the
same transaction as the change (see loyalty.audit.service.record)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base


class AuditLog(Base):
    __tablename__ = "audit_log"
    # Every filter of GET /v1/audit starts with the programme and reads newest first, so each
    # index ends in (at, id): the keyset order of the pages.
    __table_args__ = (
        Index("ix_audit_log_programme_at", "programme_id", "at", "id"),
        Index("ix_audit_log_programme_entity", "programme_id", "entity_type", "entity_id", "at", "id"),
        Index("ix_audit_log_programme_actor", "programme_id", "actor", "at", "id"),
        Index("ix_audit_log_programme_action", "programme_id", "action", "at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # No cascade: a programme with an audit trail cannot be deleted by accident.
    programme_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("programmes.id"))
    # now() is the start of the writing transaction: the change and its row share one time.
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(Text)
    key_id: Mapped[int | None] = mapped_column(BigInteger)
    operator_id: Mapped[int | None] = mapped_column(BigInteger)
    # Byte order: the ?action=subject.* filter is a range on it (see the migration).
    action: Mapped[str] = mapped_column(Text(collation="C"))
    entity_type: Mapped[str] = mapped_column(Text)
    entity_id: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    reason: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)
