"""benefit_campaigns.announced_at: when benefit.granted went out for a campaign's members

Revision ID: 0012
Revises: 0011

The worker's announce_benefit_campaigns job sets it in the transaction that writes the events,
so a campaign is announced once however often the job runs. No backfill: campaigns running
at upgrade time are announced by the job's next run, ended ones are marked without events.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("benefit_campaigns", sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True))
    # The job's scan: campaigns not announced yet, by start (small: announced rows drop out).
    op.create_index(
        "ix_benefit_campaigns_unannounced",
        "benefit_campaigns",
        ["starts_at"],
        postgresql_where=sa.text("announced_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_benefit_campaigns_unannounced", table_name="benefit_campaigns")
    op.drop_column("benefit_campaigns", "announced_at")
