"""Tables of member activity: events, daily activity, earning rules and their usage.

Every table leads with programme_id, and member-scoped tables with member_id next, so that they
can be distributed by (programme, member) like the ledger's.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base


class MemberEvent(Base):
    """One event as received, idempotent by the sender's event id."""

    __tablename__ = "member_events"
    __table_args__ = (
        UniqueConstraint("programme_id", "event_id", name="uq_member_events_event_id"),
        Index("ix_member_events_order", "programme_id", "order_ref"),
        Index("ix_member_events_member_time", "programme_id", "member_id", "occurred_at"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    order_ref: Mapped[str | None] = mapped_column(Text)
    # Money in integer minor units of the programme's currency; negative for a refund.
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # Points the event earned (or clawed back) and the rules that fired, with why.
    points: Mapped[int] = mapped_column(BigInteger, server_default="0")
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # The stored answer, replayed when the same event id arrives again.
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class MemberActivityDay(Base):
    """Per member and day: what rolling windows sum over (orders, spend, qualifying points)."""

    __tablename__ = "member_activity_days"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    orders: Mapped[int] = mapped_column(Integer, server_default="0")
    spend: Mapped[int] = mapped_column(BigInteger, server_default="0")
    qualifying_points: Mapped[int] = mapped_column(BigInteger, server_default="0")


class EarningRule(Base):
    """Event type + condition + points formula, drawing from a budget."""

    __tablename__ = "earning_rules"
    __table_args__ = (
        UniqueConstraint("programme_id", "code", name="uq_earning_rules_code"),
        Index("ix_earning_rules_event", "programme_id", "event_type", "active"),
    )

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, server_default="")
    event_type: Mapped[str] = mapped_column(Text)
    # Rule language over the member's facts (see loyalty.rules); {"all": []} = always.
    condition: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default='{"all": []}')
    # Filters on the event itself: {"min_amount": .., "channels": [..], "currency": ".."}.
    event_filter: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # {"kind": "per_unit", "points": 1, "per": 100, "multiplier": 1.0} or {"kind": "fixed", ...}
    formula: Mapped[dict[str, Any]] = mapped_column(JSONB)
    cap_per_day: Mapped[int | None] = mapped_column(BigInteger)
    cap_per_month: Mapped[int | None] = mapped_column(BigInteger)
    budget: Mapped[str] = mapped_column(Text)
    pending_days: Mapped[int] = mapped_column(Integer, server_default="0")
    expiry: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    qualifying: Mapped[bool] = mapped_column(Boolean, server_default="true")
    priority: Mapped[int] = mapped_column(Integer, server_default="100")
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EarningRuleUsage(Base):
    """Points a rule gave a member in one day or month: what its caps are checked against."""

    __tablename__ = "earning_rule_usage"
    __table_args__ = (CheckConstraint("period IN ('day', 'month')", name="period"),)

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rule_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    period: Mapped[str] = mapped_column(Text, primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger, server_default="0")
