"""Tables of the benefits catalogue: definitions, who gets them (tier, segment campaign, grant),
quota usage per period and the consumptions (reservations) that moved it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base

BENEFIT_TYPES = ("flag", "quota", "discount", "multiplier", "gift", "upgrade")


class Benefit(Base):
    """One benefit a programme offers; ``params`` holds the type's defaults (see core.py)."""

    __tablename__ = "benefits"
    __table_args__ = (
        UniqueConstraint("programme_id", "code"),
        CheckConstraint(
            "type IN ('flag', 'quota', 'discount', 'multiplier', 'gift', 'upgrade')", name="type"
        ),
    )

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    # Language tag -> text: {"en": "Free shipping", "zh-CN": "免运费"}.
    names: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    descriptions: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # Empty: every channel.
    channels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    valid_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CatalogueVersion(Base):
    """Bumped in the transaction of every write to benefits, tier benefits and campaigns: the
    checkout check reads it in its one statement and reloads its cache when it moved."""

    __tablename__ = "benefit_catalogue_versions"

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger, server_default="1")


class TierBenefit(Base):
    """A tier includes a benefit, with parameters overriding the benefit's defaults."""

    __tablename__ = "tier_benefits"
    __table_args__ = (
        ForeignKeyConstraint(
            ["programme_id", "benefit_id"], ["benefits.programme_id", "benefits.id"], ondelete="CASCADE"
        ),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tier: Mapped[str] = mapped_column(Text, primary_key=True)
    benefit_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class BenefitCampaign(Base):
    """Members of a segment get a benefit from starts_at to ends_at. ``announced_at``: when the
    worker wrote benefit.granted for the members it started with (tasks.announce_campaigns)."""

    __tablename__ = "benefit_campaigns"
    __table_args__ = (
        ForeignKeyConstraint(
            ["programme_id", "benefit_id"], ["benefits.programme_id", "benefits.id"], ondelete="CASCADE"
        ),
        UniqueConstraint("programme_id", "code"),
        CheckConstraint("ends_at > starts_at", name="period"),
        Index("ix_benefit_campaigns_unannounced", "starts_at", postgresql_where=text("announced_at IS NULL")),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text)
    segment: Mapped[str] = mapped_column(Text)
    benefit_id: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    announced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BenefitGrant(Base):
    """An individual grant (operator or CRM) with expiry and reason; revoked, never deleted."""

    __tablename__ = "benefit_grants"
    __table_args__ = (
        ForeignKeyConstraint(
            ["programme_id", "benefit_id"], ["benefits.programme_id", "benefits.id"], ondelete="CASCADE"
        ),
        Index("ix_benefit_grants_member", "programme_id", "member_id", "benefit_id"),
        Index("ix_benefit_grants_benefit", "programme_id", "benefit_id", "member_id"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    benefit_id: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    reason: Mapped[str] = mapped_column(Text, server_default="")
    actor: Mapped[str] = mapped_column(Text, server_default="")
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_reason: Mapped[str | None] = mapped_column(Text)


class BenefitUsage(Base):
    """Uses of a quota benefit in one period: used (committed) and reserved (pending). The
    conditional UPDATE in the repository never lets used + reserved pass the quota."""

    __tablename__ = "benefit_usage"
    __table_args__ = (
        CheckConstraint("used >= 0", name="used"),
        CheckConstraint("reserved >= 0", name="reserved"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    benefit_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    used: Mapped[int] = mapped_column(Integer, server_default="0")
    reserved: Mapped[int] = mapped_column(Integer, server_default="0")


class BenefitConsumption(Base):
    """One use of a benefit for an order: idempotent by (benefit, order_reference).
    reserved -> committed | released; committed -> released on cancellation."""

    __tablename__ = "benefit_consumptions"
    __table_args__ = (
        UniqueConstraint("programme_id", "benefit_id", "order_reference"),
        CheckConstraint("state IN ('reserved', 'committed', 'released')", name="state"),
        Index("ix_benefit_consumptions_expiry", "expires_at", postgresql_where="state = 'reserved'"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    benefit_id: Mapped[int] = mapped_column(BigInteger)
    member_id: Mapped[int] = mapped_column(BigInteger)
    order_reference: Mapped[str] = mapped_column(Text)
    period_start: Mapped[date | None] = mapped_column(Date)
    state: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
