"""ledger domain events: points.earned, spent, expired, clawed_back and adjusted

Revision ID: 0008
Revises: 0007

A statement-level trigger on transactions writes one domain event per member posting, in the
posting's own transaction (src/loyalty/ledger/sql/ledger_events_v1.sql).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every posting now writes an event: an index nothing reads would cost each of them (batch
    # earn, 10,000 rows a request, most of all). Deliveries find events by their id.
    op.drop_index("ix_domain_events_type", table_name="domain_events")
    # The trigger and its function are the repeatable migration ledger/sql/ledger_events_v1.sql (loyalty.sql_files),
    # run after the last revision and again whenever the file changes: run here, it would be
    # today's file against this revision's tables.


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS transactions_emit_events ON transactions")
    op.execute("DROP TRIGGER IF EXISTS transactions_emit_events_on_amount ON transactions")
    op.execute("DROP FUNCTION IF EXISTS ledger_emit_events()")
    op.create_index("ix_domain_events_type", "domain_events", ["programme_id", "type", "id"], unique=False)
