"""programmes.config_version: bumped with every change of what an event reads as configuration

Activity settings, earning rules, tier ladder versions and the programme's time zone are cached
per process by the event path; the version tells a cache whether it is still current. It comes
from a sequence, never from config_version + 1: a rolled-back change must not let a later,
different change reuse a number a cache already holds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONFIG_TABLES = ("activity_settings", "earning_rules", "tier_ladder_versions")


def upgrade() -> None:
    op.execute("CREATE SEQUENCE programme_config_version_seq")
    op.add_column(
        "programmes",
        sa.Column(
            "config_version",
            sa.BigInteger(),
            server_default=sa.text("nextval('programme_config_version_seq')"),
            nullable=False,
        ),
    )
    op.execute(
        """
        CREATE FUNCTION programme_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                UPDATE programmes SET config_version = nextval('programme_config_version_seq')
                WHERE id = OLD.programme_id;
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                UPDATE programmes SET config_version = nextval('programme_config_version_seq')
                WHERE id = NEW.programme_id;
            END IF;
            RETURN NULL;
        END $$
        """
    )
    for table in _CONFIG_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_config_version AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION programme_config_changed()"
        )
    op.execute(
        """
        CREATE FUNCTION programme_timezone_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.config_version := nextval('programme_config_version_seq');
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER programmes_config_version BEFORE UPDATE OF timezone ON programmes "
        "FOR EACH ROW WHEN (OLD.timezone IS DISTINCT FROM NEW.timezone) "
        "EXECUTE FUNCTION programme_timezone_changed()"
    )

    # An earning rule's earn: a budget's refusal comes back as a row instead of aborting the
    # caller's transaction. The exception block undoes the earn's writes as a savepoint would,
    # without the two round trips of one.
    op.execute(
        """
        CREATE FUNCTION activity_rule_earn(
            p_programme bigint, p_key text, p_fingerprint bytea, p_member text, p_budget text,
            p_amount bigint, p_partial boolean, p_reference text, p_reason text,
            p_vests_at timestamptz, p_expires_at timestamptz, p_metadata jsonb, p_actor text,
            OUT replayed boolean, OUT body jsonb, OUT error_code text, OUT error_detail text
        ) LANGUAGE plpgsql AS $$
        BEGIN
            SELECT e.replayed, e.body INTO replayed, body
            FROM ledger_earn(p_programme, p_key, p_fingerprint, p_member, p_budget, p_amount, p_partial,
                             p_reference, p_reason, p_vests_at, p_expires_at, p_metadata, p_actor) e;
        EXCEPTION WHEN SQLSTATE 'LY000' THEN
            GET STACKED DIAGNOSTICS error_code = MESSAGE_TEXT, error_detail = PG_EXCEPTION_DETAIL;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION activity_rule_earn(bigint, text, bytea, text, text, bigint, boolean, text, text, "
        "timestamptz, timestamptz, jsonb, text)"
    )
    op.execute("DROP TRIGGER programmes_config_version ON programmes")
    op.execute("DROP FUNCTION programme_timezone_changed()")
    for table in _CONFIG_TABLES:
        op.execute(f"DROP TRIGGER {table}_config_version ON {table}")
    op.execute("DROP FUNCTION programme_config_changed()")
    op.drop_column("programmes", "config_version")
    op.execute("DROP SEQUENCE programme_config_version_seq")
