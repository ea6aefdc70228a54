"""benefit.granted when a member's tier starts giving them a benefit

Revision ID: 0010
Revises: 0009

Triggers on member_tiers (src/loyalty/benefits/sql/benefit_events_v1.sql).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The triggers and their function are the repeatable migration benefits/sql/benefit_events_v1.sql (loyalty.sql_files),
    # run after the last revision and again whenever the file changes: run here, it would be
    # today's file against this revision's tables.
    pass


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS member_tiers_benefit_grants_insert ON member_tiers")
    op.execute("DROP TRIGGER IF EXISTS member_tiers_benefit_grants_update ON member_tiers")
    op.execute("DROP FUNCTION IF EXISTS benefit_emit_tier_grants()")
