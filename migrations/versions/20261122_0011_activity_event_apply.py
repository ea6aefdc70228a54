"""activity_event_apply: the end of a member event in one call

Revision ID: 0011
Revises: 0010

The earns, cap usage, points, tier row and stored answer of an event
(src/loyalty/activity/sql/activity_events_v1.sql).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sql import run_sql_file  # noqa: E402

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run_sql_file("activity/sql/activity_events_v1.sql")


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION activity_event_apply(bigint, bigint, bigint, date, bigint, jsonb, jsonb, boolean, jsonb, jsonb, "
        "jsonb, jsonb)"
    )
