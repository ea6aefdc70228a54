"""Tables of what is known of each member, and how a programme measures it: the facts the
rule language reads (member_facts) and the settings they are computed with (activity_settings).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base

LIFECYCLE_STAGES = ("new", "active", "silent", "churned")


class ActivitySettings(Base):
    """How a programme measures its members: qualification window, RFM scoring, lifecycle."""

    __tablename__ = "activity_settings"
    __table_args__ = (
        CheckConstraint(
            "window_kind IN ('rolling_months', 'calendar_year', 'anniversary')", name="window_kind"
        ),
    )

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    window_kind: Mapped[str] = mapped_column(Text, server_default="rolling_months")
    window_months: Mapped[int] = mapped_column(SmallInteger, server_default="12")
    # {"recency_days": [..4 ascending cut points..], "frequency": [...], "monetary": [...]}
    rfm: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # {"new_days": 30, "active_days": 90, "silent_days": 180}: beyond silent_days, churned.
    lifecycle: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # Event types a programme declares beyond the built-in ones.
    custom_event_types: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MemberFacts(Base):
    """What is known of a member, kept current from events and the ledger (rules read this)."""

    __tablename__ = "member_facts"
    __table_args__ = (
        CheckConstraint(f"lifecycle IN {LIFECYCLE_STAGES!r}", name="lifecycle"),
        Index("ix_member_facts_tags", "tags", postgresql_using="gin"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # In the programme's qualification window.
    qualifying_points: Mapped[int] = mapped_column(BigInteger, server_default="0")
    spend: Mapped[int] = mapped_column(BigInteger, server_default="0")
    orders: Mapped[int] = mapped_column(Integer, server_default="0")
    lifetime_points: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lifetime_spend: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lifetime_orders: Mapped[int] = mapped_column(Integer, server_default="0")
    first_order_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_order_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    recency_score: Mapped[int | None] = mapped_column(SmallInteger)
    frequency_score: Mapped[int | None] = mapped_column(SmallInteger)
    monetary_score: Mapped[int | None] = mapped_column(SmallInteger)
    lifecycle: Mapped[str] = mapped_column(Text, server_default="new")
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    # The window the qualifying figures cover, so a reader knows how fresh they are.
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
