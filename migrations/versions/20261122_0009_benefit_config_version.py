"""benefits bump programmes.config_version, so the event path knows when multipliers exist

Revision ID: 0009
Revises: 0008

An event reads the member's points multiplier (a benefit) only when the programme has an
active multiplier benefit at all; whether it has one is part of the cached configuration,
which a change of any benefit now invalidates (programme_config_changed() is from 0007).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TRIGGER benefits_config_version AFTER INSERT OR UPDATE OR DELETE ON benefits "
        "FOR EACH ROW EXECUTE FUNCTION programme_config_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS benefits_config_version ON benefits")
