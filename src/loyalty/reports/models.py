"""Tables of the reports: rollups the dashboard reads instead of the ledger's entries.

Each ``daily_*`` row holds one programme's net change on one day of the programme's own time
zone; a level (stock, cap, liability) is the running sum of its rows. See docs/reports.md.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, Date, DateTime, Identity, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.activity.models import MemberEvent
from loyalty.db import Base
from loyalty.ledger.models import LedgerTransaction

FLOW_KINDS = ("issued", "redeemed", "expired", "clawed_back", "adjusted")


class ReportWatermark(Base):
    """Every ledger row created before ``upto`` is rolled up, and no later one."""

    __tablename__ = "report_watermarks"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    upto: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DailyPointFlow(Base):
    __tablename__ = "daily_point_flows"
    __table_args__ = (CheckConstraint(f"kind IN {FLOW_KINDS!r}", name="kind"),)

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger, server_default="0")
    money_micros: Mapped[int] = mapped_column(BigInteger, server_default="0")
    tx_count: Mapped[int] = mapped_column(BigInteger, server_default="0")


class DailyMemberStock(Base):
    """Net change of the members' available, pending and held buckets that day."""

    __tablename__ = "daily_member_stock"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    available: Mapped[int] = mapped_column(BigInteger, server_default="0")
    pending: Mapped[int] = mapped_column(BigInteger, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, server_default="0")


class DailyBudgetFlow(Base):
    __tablename__ = "daily_budget_flows"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    budget_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    issued: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cap_change: Mapped[int] = mapped_column(BigInteger, server_default="0")


class BudgetFlowTotals(Base):
    """Each budget's issued points and cap so far: the sum of its daily_budget_flows rows."""

    __tablename__ = "budget_flow_totals"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    budget_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    issued: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cap: Mapped[int] = mapped_column(BigInteger, server_default="0")


class DailyMembers(Base):
    __tablename__ = "daily_members"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    new_members: Mapped[int] = mapped_column(BigInteger, server_default="0")
    active_members: Mapped[int] = mapped_column(BigInteger, server_default="0")


class MemberActiveDay(Base):
    """Who is already counted active on a recent day (older days are pruned)."""

    __tablename__ = "member_active_days"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class WeeklyTierMoves(Base):
    __tablename__ = "weekly_tier_moves"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    week: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    # '' stands for "no tier".
    from_tier: Mapped[str] = mapped_column(Text, primary_key=True)
    to_tier: Mapped[str] = mapped_column(Text, primary_key=True)
    moves: Mapped[int] = mapped_column(BigInteger, server_default="0")


class ExpiryForecast(Base):
    """Points (and their value) due to expire per local month, as of ``computed_at``."""

    __tablename__ = "expiry_forecast"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger, server_default="0")
    money_micros: Mapped[int] = mapped_column(BigInteger, server_default="0")
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ReportDelta(Base):
    """Appended by the triggers of reports/sql/reports_v1.sql; folded in and deleted by the job."""

    __tablename__ = "report_deltas"
    __table_args__ = (CheckConstraint("metric IN ('new_member', 'tier_move')", name="metric"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    programme_id: Mapped[int] = mapped_column(BigInteger)
    day: Mapped[date] = mapped_column(Date)
    metric: Mapped[str] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(Text)
    from_tier: Mapped[str | None] = mapped_column(Text)
    to_tier: Mapped[str | None] = mapped_column(Text)
    n: Mapped[int] = mapped_column(BigInteger)


# The job reads the recent tail of these tables by time, and the export a period. BRIN costs an
# insert next to nothing because rows arrive in time order. Declared here, on the other
# domains' tables, so that their models stay as they are.
Index(
    "ix_transactions_created_brin",
    LedgerTransaction.__table__.c.created_at,
    postgresql_using="brin",
    postgresql_with={"pages_per_range": 32, "autosummarize": "on"},
)
Index(
    "ix_member_events_received_brin",
    MemberEvent.__table__.c.received_at,
    postgresql_using="brin",
    postgresql_with={"pages_per_range": 32, "autosummarize": "on"},
)
