"""ledger posting functions, version 1

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import op

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sql import SRC, run_sql_file  # noqa: E402

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILE = "ledger/sql/ledger_v1.sql"


def upgrade() -> None:
    run_sql_file(FILE)


def downgrade() -> None:
    names = re.findall(r"CREATE OR REPLACE FUNCTION (\w+)", (SRC / FILE).read_text())
    for name in reversed(names):
        op.execute(f"DROP FUNCTION IF EXISTS {name} CASCADE")
