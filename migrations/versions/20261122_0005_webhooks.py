"""outbound webhooks: endpoints, deliveries (fanned out by a trigger on domain_events), settings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fan-out in the cause's own transaction, one set-based INSERT per statement that wrote events.
# A watermark over domain_events.id would skip an event whose transaction took its id earlier
# but committed later than the watermark's run; a trigger cannot miss one. Endpoints created
# later do not receive earlier events.
FAN_OUT = """
CREATE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (programme_id, endpoint_id, event_id, subject, event_type)
    SELECT ev.programme_id, ep.id, ev.id, ev.subject, ev.type
    FROM new_events ev
    JOIN webhook_endpoints ep
      ON ep.programme_id = ev.programme_id AND ep.active
     AND (ev.type = ANY (ep.event_types) OR '*' = ANY (ep.event_types))
    ORDER BY ev.id, ep.id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$
"""
FAN_OUT_TRIGGER = """
CREATE TRIGGER domain_events_webhook_fan_out
AFTER INSERT ON domain_events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION webhook_fan_out();
"""


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("event_types", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("url ~ '^https?://'", name=op.f("ck_webhook_endpoints_url_http")),
        sa.PrimaryKeyConstraint("programme_id", "id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        "ix_webhook_endpoints_active",
        "webhook_endpoints",
        ["programme_id"],
        unique=False,
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("endpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.SmallInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'failed', 'succeeded', 'dead')",
            name=op.f("ck_webhook_deliveries_status_known"),
        ),
        sa.PrimaryKeyConstraint("programme_id", "id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "programme_id",
            "endpoint_id",
            "event_id",
            name=op.f("uq_webhook_deliveries_programme_id_endpoint_id_event_id"),
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    )
    op.create_index(
        "ix_webhook_deliveries_order",
        "webhook_deliveries",
        ["programme_id", "endpoint_id", "subject", "event_id"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    )
    op.create_index("ix_webhook_deliveries_log", "webhook_deliveries", ["programme_id", "id"], unique=False)
    op.create_table(
        "webhook_settings",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("expiring_soon_days", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("programme_id", name=op.f("pk_webhook_settings")),
    )
    op.create_table(
        "webhook_lot_notices",
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("programme_id", "member_id", "lot_id", name=op.f("pk_webhook_lot_notices")),
    )
    op.execute(FAN_OUT)
    op.execute(FAN_OUT_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS domain_events_webhook_fan_out ON domain_events")
    op.execute("DROP FUNCTION IF EXISTS webhook_fan_out()")
    op.drop_table("webhook_lot_notices")
    op.drop_table("webhook_settings")
    op.drop_index("ix_webhook_deliveries_log", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_order", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_endpoints_active", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
