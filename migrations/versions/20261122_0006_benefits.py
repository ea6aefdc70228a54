"""benefits: catalogue, tier benefits, segment campaigns, grants, quota usage, consumptions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now() -> sa.TextClause:
    return sa.text("now()")


def _benefit_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["programme_id", "benefit_id"],
        ["benefits.programme_id", "benefits.id"],
        name=op.f(f"fk_{table}_programme_id_benefits"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "benefits",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("names", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("descriptions", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("params", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("channels", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint(
            "type IN ('flag', 'quota', 'discount', 'multiplier', 'gift', 'upgrade')",
            name=op.f("ck_benefits_type"),
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_benefits_programme_id_programmes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("programme_id", "id", name=op.f("pk_benefits")),
        sa.UniqueConstraint("programme_id", "code", name=op.f("uq_benefits_programme_id_code")),
    )
    op.create_table(
        "benefit_catalogue_versions",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="1", nullable=False),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_benefit_catalogue_versions_programme_id_programmes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("programme_id", name=op.f("pk_benefit_catalogue_versions")),
    )
    op.create_table(
        "tier_benefits",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("benefit_id", sa.BigInteger(), nullable=False),
        sa.Column("params", postgresql.JSONB(), server_default="{}", nullable=False),
        _benefit_fk("tier_benefits"),
        sa.PrimaryKeyConstraint("programme_id", "tier", "benefit_id", name=op.f("pk_tier_benefits")),
    )
    op.create_table(
        "benefit_campaigns",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("segment", sa.Text(), nullable=False),
        sa.Column("benefit_id", sa.BigInteger(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("params", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_benefit_campaigns_period")),
        _benefit_fk("benefit_campaigns"),
        sa.PrimaryKeyConstraint("programme_id", "id", name=op.f("pk_benefit_campaigns")),
        sa.UniqueConstraint("programme_id", "code", name=op.f("uq_benefit_campaigns_programme_id_code")),
    )
    op.create_table(
        "benefit_grants",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("benefit_id", sa.BigInteger(), nullable=False),
        sa.Column("params", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("actor", sa.Text(), server_default="", nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        _benefit_fk("benefit_grants"),
        sa.PrimaryKeyConstraint("programme_id", "id", name=op.f("pk_benefit_grants")),
    )
    op.create_index("ix_benefit_grants_member", "benefit_grants", ["programme_id", "member_id", "benefit_id"])
    op.create_index(
        "ix_benefit_grants_benefit", "benefit_grants", ["programme_id", "benefit_id", "member_id"]
    )
    op.create_table(
        "benefit_usage",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("benefit_id", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("used", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reserved", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("used >= 0", name=op.f("ck_benefit_usage_used")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_benefit_usage_reserved")),
        sa.PrimaryKeyConstraint(
            "programme_id", "member_id", "benefit_id", "period_start", name=op.f("pk_benefit_usage")
        ),
    )
    op.create_table(
        "benefit_consumptions",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("benefit_id", sa.BigInteger(), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("order_reference", sa.Text(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint(
            "state IN ('reserved', 'committed', 'released')", name=op.f("ck_benefit_consumptions_state")
        ),
        sa.PrimaryKeyConstraint("programme_id", "id", name=op.f("pk_benefit_consumptions")),
        sa.UniqueConstraint(
            "programme_id",
            "benefit_id",
            "order_reference",
            name=op.f("uq_benefit_consumptions_programme_id_benefit_id_order_reference"),
        ),
    )
    op.create_index(
        "ix_benefit_consumptions_expiry",
        "benefit_consumptions",
        ["expires_at"],
        postgresql_where=sa.text("state = 'reserved'"),
    )


def downgrade() -> None:
    op.drop_index("ix_benefit_consumptions_expiry", table_name="benefit_consumptions")
    op.drop_table("benefit_consumptions")
    op.drop_table("benefit_usage")
    op.drop_index("ix_benefit_grants_benefit", table_name="benefit_grants")
    op.drop_index("ix_benefit_grants_member", table_name="benefit_grants")
    op.drop_table("benefit_grants")
    op.drop_table("benefit_campaigns")
    op.drop_table("tier_benefits")
    op.drop_table("benefit_catalogue_versions")
    op.drop_table("benefits")
