"""report rollups: daily point flows, member stock, budget burn, members and tier moves

Revision ID: 0016
Revises: 0014

The dashboard reads these tables, never the ledger's entries. The ledger tables are rolled up
by the worker's ``rollup_reports`` job from a commit-safe time watermark (see
docs/reports.md); enrolments and tier changes, which are rare, are appended to ``report_deltas``
by statement triggers (reports/sql/reports_v1.sql) and folded in by the same job. The posting functions are not
changed: an earn pays only for the BRIN entry of ``transactions.created_at``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLOW_KINDS = "('issued', 'redeemed', 'expired', 'clawed_back', 'adjusted')"


def _pk(*cols: str, name: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*cols, name=op.f(f"pk_{name}"))


def _big(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    op.create_table(
        "report_watermarks",
        sa.Column("name", sa.Text(), nullable=False),
        # Every ledger row created before this instant has been rolled up, and no later one.
        sa.Column("upto", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        _pk("name", name="report_watermarks"),
    )
    op.create_table(
        "daily_point_flows",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        _big("points"),
        _big("money_micros"),
        _big("tx_count"),
        sa.CheckConstraint(f"kind IN {FLOW_KINDS}", name=op.f("ck_daily_point_flows_kind")),
        _pk("programme_id", "day", "kind", name="daily_point_flows"),
    )
    op.create_table(
        "daily_member_stock",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        # Net change of the members' buckets that day; the stock is the running sum.
        _big("available"),
        _big("pending"),
        _big("held"),
        _pk("programme_id", "day", name="daily_member_stock"),
    )
    op.create_table(
        "daily_budget_flows",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("budget_id", sa.BigInteger(), nullable=False),
        _big("issued"),
        _big("cap_change"),
        # Day before budget: the burn chart reads a period of every budget.
        _pk("programme_id", "day", "budget_id", name="daily_budget_flows"),
    )
    # Each budget's totals so far: a burn chart's opening level without summing its history.
    op.create_table(
        "budget_flow_totals",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("budget_id", sa.BigInteger(), nullable=False),
        _big("issued"),
        _big("cap"),
        _pk("programme_id", "budget_id", name="budget_flow_totals"),
    )
    op.create_table(
        "daily_members",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        _big("new_members"),
        _big("active_members"),
        _pk("programme_id", "day", name="daily_members"),
    )
    # Who was already counted active on a recent day; older days are pruned by the job.
    op.create_table(
        "member_active_days",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        _pk("programme_id", "day", "member_id", name="member_active_days"),
    )
    op.create_table(
        "weekly_tier_moves",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        # '' stands for "no tier" (a first assignment, or a member leaving the ladder).
        sa.Column("from_tier", sa.Text(), nullable=False),
        sa.Column("to_tier", sa.Text(), nullable=False),
        _big("moves"),
        _pk("programme_id", "week", "kind", "from_tier", "to_tier", name="weekly_tier_moves"),
    )
    op.create_table(
        "expiry_forecast",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        _big("points"),
        _big("money_micros"),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        _pk("programme_id", "month", name="expiry_forecast"),
    )
    op.create_table(
        "report_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=True),
        sa.Column("from_tier", sa.Text(), nullable=True),
        sa.Column("to_tier", sa.Text(), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("metric IN ('new_member', 'tier_move')", name=op.f("ck_report_deltas_metric")),
        _pk("id", name="report_deltas"),
    )
    # BRIN: rows arrive in created_at order, so a few hundred bytes index millions of rows, and
    # an insert costs next to nothing (the job reads the recent tail, the export a period).
    op.execute(
        "CREATE INDEX ix_transactions_created_brin ON transactions USING brin (created_at) "
        "WITH (pages_per_range = 32, autosummarize = on)"
    )
    op.execute(
        "CREATE INDEX ix_member_events_received_brin ON member_events USING brin (received_at) "
        "WITH (pages_per_range = 32, autosummarize = on)"
    )
    # Members and tier changes that exist already: counted once, as deltas.
    op.execute(
        """
        INSERT INTO report_deltas (programme_id, day, metric, n)
        SELECT m.programme_id, (m.enrolled_at AT TIME ZONE p.timezone)::date, 'new_member', count(*)
        FROM members m JOIN programmes p ON p.id = m.programme_id GROUP BY 1, 2
        """
    )
    op.execute(
        """
        INSERT INTO report_deltas (programme_id, day, metric, kind, from_tier, to_tier, n)
        SELECT h.programme_id, (h.at AT TIME ZONE p.timezone)::date, 'tier_move', h.kind,
               coalesce(h.from_tier, ''), coalesce(h.to_tier, ''), count(*)
        FROM member_tier_history h JOIN programmes p ON p.id = h.programme_id
        WHERE h.from_tier IS DISTINCT FROM h.to_tier GROUP BY 1, 2, 4, 5, 6
        """
    )


def downgrade() -> None:
    # The triggers and their functions come from reports/sql/reports_v1.sql (repeatable).
    op.execute("DROP TRIGGER IF EXISTS report_tier_changes ON member_tier_history")
    op.execute("DROP TRIGGER IF EXISTS report_members_enrolled ON members")
    op.execute("DROP FUNCTION IF EXISTS report_tier_changes()")
    op.execute("DROP FUNCTION IF EXISTS report_members_enrolled()")
    op.execute("DROP INDEX IF EXISTS ix_member_events_received_brin")
    op.execute("DROP INDEX IF EXISTS ix_transactions_created_brin")
    for table in (
        "report_deltas",
        "expiry_forecast",
        "weekly_tier_moves",
        "member_active_days",
        "daily_members",
        "budget_flow_totals",
        "daily_budget_flows",
        "daily_member_stock",
        "daily_point_flows",
        "report_watermarks",
    ):
        op.drop_table(table)
