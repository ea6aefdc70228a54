"""benefit.granted when a member's tier starts giving them a benefit

Revision ID: 0010
Revises: 0009

Triggers on member_tiers (src/loyalty/benefits/sql/benefit_events_v1.sql).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sql import run_sql_file  # noqa: E402

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run_sql_file("benefits/sql/benefit_events_v1.sql")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS member_tiers_benefit_grants_insert ON member_tiers")
    op.execute("DROP TRIGGER IF EXISTS member_tiers_benefit_grants_update ON member_tiers")
    op.execute("DROP FUNCTION IF EXISTS benefit_emit_tier_grants()")
