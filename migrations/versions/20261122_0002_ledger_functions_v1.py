"""ledger posting functions, version 1

Revision ID: 0002
Revises: 0001

The functions themselves are in src/loyalty/ledger/sql/ledger_v1.sql (loyalty.sql_files).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import op

from loyalty.sql_files import PACKAGE_DIR

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILE = "ledger/sql/ledger_v1.sql"


def upgrade() -> None:
    # The functions are the repeatable migration ledger/sql/ledger_v1.sql (loyalty.sql_files),
    # run after the last revision and again whenever the file changes: run here, it would be
    # today's file against this revision's tables.
    pass


def downgrade() -> None:
    names = re.findall(r"CREATE OR REPLACE FUNCTION (\w+)", (PACKAGE_DIR / FILE).read_text())
    for name in reversed(names):
        op.execute(f"DROP FUNCTION IF EXISTS {name} CASCADE")
