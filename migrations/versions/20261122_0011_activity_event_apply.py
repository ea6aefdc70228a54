"""activity_event_apply: the end of a member event in one call

Revision ID: 0011
Revises: 0010

The earns, cap usage, points, tier row and stored answer of an event
(src/loyalty/activity/sql/activity_events_v1.sql).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The function is the repeatable migration activity/sql/activity_events_v1.sql (loyalty.sql_files),
    # run after the last revision and again whenever the file changes: run here, it would be
    # today's file against this revision's tables.
    pass


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION activity_event_apply(bigint, bigint, bigint, date, bigint, jsonb, jsonb, boolean, jsonb, jsonb, "
        "jsonb, jsonb)"
    )
