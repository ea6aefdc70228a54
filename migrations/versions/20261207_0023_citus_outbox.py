"""citus: the outbox (domain_events, webhook_deliveries) distributed by member

Revision ID: 0023
Revises: 0022

Runs only on a database where the ``citus`` extension exists; anywhere else it does nothing.
Revision 0021 left the outbox on the coordinator, so every posting that wrote an event became a
transaction of two nodes. Here both tables gain the member that owns them (``member_id``,
defaulting to ``ledger_owner()``: the member a routed call set, else anchor 0) and are
distributed with ``members``, so a member's event and its deliveries sit on the member's shard.
The webhook fan-out, a statement trigger over a transition table (revision 0005), becomes a row
trigger: the delivery copies the event's owner.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("domain_events", "webhook_deliveries")

# One INSERT ... VALUES per endpoint: each is routed to the event's own shard.
FAN_OUT_ROW = """
CREATE OR REPLACE FUNCTION webhook_fan_out_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_endpoint bigint;
BEGIN
    FOR v_endpoint IN
        SELECT ep.id FROM webhook_endpoints ep
        WHERE ep.programme_id = NEW.programme_id AND ep.active
          AND (NEW.type = ANY (ep.event_types) OR '*' = ANY (ep.event_types))
        ORDER BY ep.id
    LOOP
        INSERT INTO webhook_deliveries (programme_id, member_id, endpoint_id, event_id, subject, event_type)
        VALUES (NEW.programme_id, NEW.member_id, v_endpoint, NEW.id, NEW.subject, NEW.type)
        ON CONFLICT DO NOTHING;
    END LOOP;
    RETURN NULL;
END $$
"""


def _citus(bind: sa.engine.Connection) -> bool:
    return bool(
        bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")).scalar()
    )


def upgrade() -> None:
    bind = op.get_bind()
    if not _citus(bind):
        return
    for table in TABLES:
        if bind.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = CAST(:t AS regclass))"
            ),
            {"t": table},
        ).scalar():
            raise RuntimeError(
                f"{table} is already a Citus table (made by an earlier 0021); the outbox is "
                "distributed on a database made from scratch (docs/scaling.md)"
            )
    op.execute("DROP TRIGGER IF EXISTS domain_events_webhook_fan_out ON domain_events")
    for table in TABLES:
        # As in 0021: the ids come from plain sequences, which Citus gives each node a range of.
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id DROP IDENTITY")
        op.execute(f"CREATE SEQUENCE IF NOT EXISTS {table}_id_seq AS bigint OWNED BY {table}.id")
        op.execute(f"SELECT setval('{table}_id_seq', coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT nextval('{table}_id_seq')")
        op.add_column(
            table,
            sa.Column("member_id", sa.BigInteger(), server_default=sa.text("ledger_owner()"), nullable=False),
        )
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, ["programme_id", "id", "member_id"])
    name = "uq_webhook_deliveries_programme_id_endpoint_id_event_id"
    op.drop_constraint(name, "webhook_deliveries", type_="unique")
    op.create_unique_constraint(
        name, "webhook_deliveries", ["programme_id", "endpoint_id", "event_id", "member_id"]
    )
    op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
    for table in TABLES:
        op.execute(f"SELECT create_distributed_table('{table}', 'member_id', colocate_with := 'members')")
    # The lots already announced as expiring are a member's rows too, beside the member's lots;
    # the notice period is programme configuration, read beside them.
    op.execute(
        "SELECT create_distributed_table('webhook_lot_notices', 'member_id', colocate_with := 'members')"
    )
    op.execute("SELECT create_reference_table('webhook_settings')")
    op.execute(FAN_OUT_ROW)
    # The trigger writes only its own row's shard (the delivery has the event's member_id).
    op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    op.execute(
        "CREATE TRIGGER domain_events_webhook_fan_out AFTER INSERT ON domain_events "
        "FOR EACH ROW EXECUTE FUNCTION webhook_fan_out_row()"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if _citus(bind):
        raise RuntimeError(
            "the Citus layout cannot be taken back by a migration; restore a single-node dump instead"
        )
