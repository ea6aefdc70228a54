"""Members of a programme, known by the brand's own customer id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (
        UniqueConstraint("programme_id", "external_id"),
        # Member search (migration 0020): an id prefix as a byte-order range, with its keyset
        # order; and attribute containment (attributes @> '{"email": ...}'). The migration builds
        # the first on external_id COLLATE "C": PostgreSQL keeps that as a plain column with
        # its own collation, which is how it reflects (and so how it is declared here).
        Index("ix_members_external_id_c", "programme_id", "external_id"),
        Index(
            "ix_members_attributes",
            "attributes",
            postgresql_using="gin",
            postgresql_ops={"attributes": "jsonb_path_ops"},
        ),
    )

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    external_id: Mapped[str] = mapped_column(Text)
    # The member's points account (its balance row lives in account_balances, shard 0).
    account_id: Mapped[int] = mapped_column(BigInteger)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    status: Mapped[str] = mapped_column(Text, server_default="active")
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
