"""Tables of the tier engine: ladder versions, each member's tier, and its history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Identity, Index, Integer, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base


class TierLadderVersion(Base):
    """One version of a programme's ladder. Drafts can be backtested; publishing one makes it
    the ladder from its effective date on; earlier versions are kept for the history."""

    __tablename__ = "tier_ladder_versions"
    __table_args__ = (
        CheckConstraint("status IN ('draft', 'published', 'superseded')", name="status"),
        Index("ix_tier_ladder_versions_published", "programme_id", "effective_at"),
    )

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(Text, server_default="draft")
    # The ladder: tiers with their rules, validity, downgrade policy, grace, window and bonus.
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    note: Mapped[str] = mapped_column(Text, server_default="")
    effective_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(Text, server_default="")


class MemberTier(Base):
    """A member's current tier, its validity, grace and pin; next_assessment_at drives the cron."""

    __tablename__ = "member_tiers"
    __table_args__ = (
        CheckConstraint("pin_kind IS NULL OR pin_kind IN ('floor', 'fixed')", name="pin_kind"),
        Index("ix_member_tiers_due", "programme_id", "next_assessment_at"),
        Index("ix_member_tiers_tier", "programme_id", "tier"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tier: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer, server_default="0")
    ladder_version: Mapped[int] = mapped_column(Integer)
    achieved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    grace_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pin_kind: Mapped[str | None] = mapped_column(Text)
    pin_tier: Mapped[str | None] = mapped_column(Text)
    pin_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pin_reason: Mapped[str | None] = mapped_column(Text)
    next_assessment_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MemberTierChange(Base):
    """Why a member has their tier: every change, pin and expiry, with the deciding rule and the
    fact values at that moment."""

    __tablename__ = "member_tier_history"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    kind: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    from_tier: Mapped[str | None] = mapped_column(Text)
    to_tier: Mapped[str | None] = mapped_column(Text)
    ladder_version: Mapped[int | None] = mapped_column(Integer)
    # The deciding rule(s) with each leaf's threshold and the member's value (rules.explain).
    trace: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    facts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    actor: Mapped[str] = mapped_column(Text, server_default="")
