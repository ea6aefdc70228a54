"""Tables of outbound webhooks. Fan-out into deliveries is done by a trigger on domain_events
(migration 0005), in the transaction that wrote the event."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_active", "programme_id", postgresql_where=text("active")),
        CheckConstraint("url ~ '^https?://'", name="url_http"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default="")
    # Event types this endpoint receives; '*' means all.
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # A Standard Webhooks secret ("whsec_..."): stored readable because the worker signs with it.
    secret: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("programme_id", "endpoint_id", "event_id"),
        CheckConstraint("status IN ('pending', 'failed', 'succeeded', 'dead')", name="status_known"),
        # The worker's claim: open deliveries by due time.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'failed')"),
        ),
        # Per-member order: is an earlier delivery of this endpoint and subject still open?
        Index(
            "ix_webhook_deliveries_order",
            "programme_id",
            "endpoint_id",
            "subject",
            "event_id",
            postgresql_where=text("status IN ('pending', 'failed')"),
        ),
        # The delivery log, newest first.
        Index("ix_webhook_deliveries_log", "programme_id", "id"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[int] = mapped_column(BigInteger)
    # Copied from the event: the ordering key (deliveries of one subject go out in event order).
    subject: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # While a worker sends, the row is leased; a crashed worker's lease runs out and it is claimable again.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(SmallInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    succeeded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookSettings(Base):
    __tablename__ = "webhook_settings"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Send points.expiring_soon this many days before a lot expires; null = never.
    expiring_soon_days: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookLotNotice(Base):
    """Lots already announced as expiring soon: each lot is announced once."""

    __tablename__ = "webhook_lot_notices"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    lot_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
