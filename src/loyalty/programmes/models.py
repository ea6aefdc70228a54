"""Programmes (a brand's loyalty scheme) and the API keys that act on them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base

ROLES = ("operator", "ecommerce", "crm", "marketing")


class Programme(Base):
    __tablename__ = "programmes"
    __table_args__ = (
        CheckConstraint("clawback_policy IN ('negative', 'clamp')", name="clawback_policy"),
        CheckConstraint("code ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="code_format"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    timezone: Mapped[str] = mapped_column(Text, server_default="UTC")
    # What a refund does when the member already spent the points it earned.
    clawback_policy: Mapped[str] = mapped_column(Text, server_default="negative")
    allow_transfers: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # Bumped (from programme_config_version_seq, by triggers) with every change of activity
    # settings, earning rules, ladder versions or the time zone: validates per-process caches.
    config_version: Mapped[int] = mapped_column(
        BigInteger, server_default=text("nextval('programme_config_version_seq')")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES!r}", name="role"),
        Index("ix_api_keys_programme", "programme_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    programme_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, server_default="")
    # Keys carry 256 bits of randomness, so a SHA-256 digest is enough to store them safely.
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    prefix: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
