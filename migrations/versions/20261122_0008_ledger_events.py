"""ledger domain events: points.earned, spent, expired, clawed_back and adjusted

Revision ID: 0008
Revises: 0007

A statement-level trigger on transactions writes one domain event per member posting, in the
posting's own transaction (src/loyalty/ledger/sql/ledger_events_v1.sql).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sql import run_sql_file  # noqa: E402

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every posting now writes an event: an index nothing reads would cost each of them (batch
    # earn, 10,000 rows a request, most of all). Deliveries find events by their id.
    op.drop_index("ix_domain_events_type", table_name="domain_events")
    run_sql_file("ledger/sql/ledger_events_v1.sql")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS transactions_emit_events ON transactions")
    op.execute("DROP TRIGGER IF EXISTS transactions_emit_events_on_amount ON transactions")
    op.execute("DROP FUNCTION IF EXISTS ledger_emit_events()")
    op.create_index("ix_domain_events_type", "domain_events", ["programme_id", "type", "id"], unique=False)
