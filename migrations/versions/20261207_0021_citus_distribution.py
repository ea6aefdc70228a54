"""citus: distribute the member-scoped ledger by member, programme configuration as reference tables

Revision ID: 0021
Revises: 0020

Runs only on a database where the ``citus`` extension exists (created by whoever set the cluster
up, before ``loyalty migrate``); anywhere else it does nothing. docs/scaling.md gives the reasons
for each choice below. In short:

* The distribution column is the member: ``members.id`` and ``member_id`` everywhere else, so that
  one member's rows, and every write of one earn, spend, hold or clawback, sit on one shard.
  On Citus a member's id is derived from (programme, external id) (``loyalty_member_key``), so
  a caller can route by it without reading anything first.
* Rows that belong to no member (a budget's or a sink's balance shards, budget top-ups) are owned
  by an *anchor*: a negative pseudo-member id that hashes into a given shard. A budget has one
  balance shard per Citus shard, owned by that shard's anchor, so an earn takes from the budget
  shard that sits beside its member.
* Uniqueness that Citus cannot check across shards is kept by construction: a member's id is a
  function of its external id, so (programme, external id, id) is as strict as (programme,
  external id). An idempotency key is unique per member: a retry names the same member.
* Programme configuration that the ledger's postings read (programmes, accounts, budgets,
  webhook endpoints) is replicated to every node as reference tables.
  Everything else stays on the coordinator as Citus local tables, reachable from every node.

The Citus layout is made on an empty ledger: it refuses a database that already holds members.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Hash shards of the member colocation group: many more than nodes, so that the rebalancer can
# move whole shards as nodes are added (32 is Citus's own default).
SHARD_COUNT = 32

# Read by the posting, event, check and consume functions on the node that runs them:
# replicated everywhere. Their writers move programmes.config_version themselves on Citus (a
# reference table's trigger would run on every replica).
REFERENCE_TABLES = (
    "programmes",
    "accounts",
    "budgets",
    "webhook_endpoints",
    "activity_settings",
    "earning_rules",
    "segments",
    "tier_ladder_versions",
    "benefits",
    "benefit_catalogue_versions",
    "tier_benefits",
    "benefit_campaigns",
)

# Distributed by member and co-located with members (table, distribution column).
MEMBER_TABLES = (
    ("members", "id"),
    ("account_balances", "member_id"),
    ("transactions", "member_id"),
    ("entries", "member_id"),
    ("lots", "member_id"),
    ("lot_movements", "member_id"),
    ("holds", "member_id"),
    ("idempotency_keys", "member_id"),
    ("budget_member_usage", "member_id"),
    ("hold_routes", "id"),
    ("member_events", "member_id"),
    ("member_facts", "member_id"),
    ("member_activity_days", "member_id"),
    ("member_tiers", "member_id"),
    ("member_tier_history", "member_id"),
    ("earning_rule_usage", "member_id"),
    ("benefit_grants", "member_id"),
    ("benefit_usage", "member_id"),
    ("benefit_consumptions", "member_id"),
)

# Primary keys that gain the distribution column (Citus checks uniqueness within a shard only).
_KEYS = {
    "account_balances": ("programme_id", "account_id", "shard", "member_id"),
    "transactions": ("programme_id", "id", "member_id"),
    "entries": ("programme_id", "txn_id", "seq", "member_id"),
    "holds": ("programme_id", "id", "member_id"),
    "idempotency_keys": ("programme_id", "key", "member_id"),
    "benefit_grants": ("programme_id", "id", "member_id"),
    "benefit_consumptions": ("programme_id", "id", "member_id"),
}

# Unique keys that gain the distribution column. A client's event id and an order's consumption
# name one member, so a retry finds its first row on that member's shard.
_UNIQUES = {
    "uq_member_events_event_id": ("member_events", ("programme_id", "event_id", "member_id")),
    "uq_benefit_consumptions_programme_id_benefit_id_order_reference": (
        "benefit_consumptions",
        ("programme_id", "benefit_id", "order_reference", "member_id"),
    ),
}


def _citus(bind: sa.engine.Connection) -> bool:
    return bool(
        bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")).scalar()
    )


def upgrade() -> None:
    bind = op.get_bind()
    if not _citus(bind):
        return
    if bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM members)")).scalar():
        raise RuntimeError(
            "the Citus layout is made on an empty ledger; this database already holds members "
            "(see docs/scaling.md, 'Moving an existing database')"
        )
    # The repeatable SQL files (re)create these triggers in their Citus form after the revisions.
    for trigger, table in (
        ("transactions_emit_events", "transactions"),
        ("transactions_emit_events_on_amount", "transactions"),
        ("report_members_enrolled", "members"),
        # A reference table's trigger runs on every replica, and each would draw its own
        # config_version: programmes.repository.update sets it instead.
        ("programmes_config_version", "programmes"),
        ("activity_settings_config_version", "activity_settings"),
        ("earning_rules_config_version", "earning_rules"),
        ("tier_ladder_versions_config_version", "tier_ladder_versions"),
        ("benefits_config_version", "benefits"),
        # Statement triggers over transition tables, which Citus cannot join with distributed
        # tables: the repeatable SQL files give their Citus forms (row triggers).
        ("member_tiers_benefit_grants_insert", "member_tiers"),
        ("member_tiers_benefit_grants_update", "member_tiers"),
        ("report_tier_changes", "member_tier_history"),
    ):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")

    for table in ("account_balances", "entries", "idempotency_keys"):
        op.add_column(table, sa.Column("member_id", sa.BigInteger(), nullable=False))
    op.alter_column("transactions", "member_id", nullable=False)
    for table, columns in _KEYS.items():
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, list(columns))
    for name, (table, columns) in _UNIQUES.items():
        op.drop_constraint(name, table, type_="unique")
        op.create_unique_constraint(name, table, list(columns))
    # A member's id is loyalty_member_key(programme, external id), given by the enrolling call.
    op.execute("ALTER TABLE members ALTER COLUMN id DROP IDENTITY")
    op.drop_constraint("uq_members_programme_id_external_id", "members", type_="unique")
    op.create_unique_constraint(
        "uq_members_programme_id_external_id", "members", ["programme_id", "external_id", "id"]
    )

    # A hold's member, by the hold's id: a capture or a void names only the hold. The id is
    # drawn so that it hashes into the member's shard, so this row sits beside the hold.
    op.create_table(
        "hold_routes",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hold_routes"),
    )
    op.create_table(
        "ledger_anchors",
        sa.Column("shard_index", sa.Integer(), primary_key=True),
        sa.Column("shardid", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("anchor", sa.BigInteger(), nullable=False, unique=True),
    )

    # Rows written by a posting that have no member of their own (entries, idempotency keys, a
    # programme's own transactions) default to the owner the posting routed to; the repeatable
    # ledger_v1.sql replaces this first form of ledger_owner.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION ledger_owner() RETURNS bigint LANGUAGE plpgsql STABLE AS $$
        DECLARE
            v_owner bigint := nullif(current_setting('loyalty.owner', true), '')::bigint;
        BEGIN
            -- A routed posting reads no table here: on its member's node that would be a nested query.
            IF v_owner IS NOT NULL THEN
                RETURN v_owner;
            END IF;
            RETURN (SELECT anchor FROM ledger_anchors WHERE shard_index = 0);
        END $$
        """
    )
    for table in ("entries", "idempotency_keys", "transactions"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN member_id SET DEFAULT ledger_owner()")

    # A budget's top-up or move writes its shards on every node and then reads them back in the
    # same transaction, which Citus allows only over one connection per node. The hot paths touch
    # one shard and do not notice.
    # And the reads that join a member's rows with a budget's or a sink's shards (verify, the
    # reports) need Citus to repartition.
    for setting in ("citus.multi_shard_modify_mode = sequential", "citus.enable_repartition_joins = on"):
        op.execute(
            f"DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {setting}', current_database()); END $$"
        )
    # Citus distributes some tables with identity columns and refuses others (one referencing a
    # reference table): the member tables' own ids come from plain sequences instead, which
    # Citus gives each node a range of.
    for table, _column in MEMBER_TABLES[1:]:
        op.execute(
            f"""
            DO $$
            DECLARE
                r record;
            BEGIN
                FOR r IN SELECT attname FROM pg_attribute
                         WHERE attrelid = '{table}'::regclass AND attidentity <> '' LOOP
                    EXECUTE format('ALTER TABLE {table} ALTER COLUMN %I DROP IDENTITY', r.attname);
                    EXECUTE format('CREATE SEQUENCE IF NOT EXISTS %I AS bigint OWNED BY {table}.%I',
                                   '{table}_' || r.attname || '_seq', r.attname);
                    EXECUTE format('ALTER TABLE {table} ALTER COLUMN %I SET DEFAULT nextval(%L)',
                                   r.attname, '{table}_' || r.attname || '_seq');
                END LOOP;
            END $$
            """
        )
    op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
    for table in REFERENCE_TABLES:
        op.execute(f"SELECT create_reference_table('{table}')")
    op.execute("SELECT create_reference_table('ledger_anchors')")
    first, column = MEMBER_TABLES[0]
    op.execute(f"SELECT create_distributed_table('{first}', '{column}', shard_count := {SHARD_COUNT})")
    for table, column in MEMBER_TABLES[1:]:
        op.execute(f"SELECT create_distributed_table('{table}', '{column}', colocate_with := '{first}')")
    # One anchor per shard: the first negative id, counting down, that hashes into it.
    op.execute(
        """
        DO $$
        DECLARE
            r record;
            v bigint := -1;
        BEGIN
            FOR r IN SELECT row_number() OVER (ORDER BY shardminvalue::bigint) - 1 AS i, shardid
                     FROM pg_dist_shard WHERE logicalrelid = 'members'::regclass LOOP
                WHILE get_shard_id_for_distribution_column('members', v) <> r.shardid LOOP
                    v := v - 1;
                END LOOP;
                INSERT INTO ledger_anchors (shard_index, shardid, anchor) VALUES (r.i, r.shardid, v);
                v := -1;
                WHILE EXISTS (SELECT 1 FROM ledger_anchors WHERE anchor = v) LOOP
                    v := v - 1;
                END LOOP;
            END LOOP;
        END $$
        """
    )
    # A change of rules, ladders or benefits moves the programme's config_version (migration
    # 0007). programmes is a reference table now, and Citus refuses a volatile function inside
    # an UPDATE of one: the number is drawn first.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION programme_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            v_version bigint;
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                v_version := nextval('programme_config_version_seq');
                UPDATE programmes SET config_version = v_version WHERE id = OLD.programme_id;
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                v_version := nextval('programme_config_version_seq');
                UPDATE programmes SET config_version = v_version WHERE id = NEW.programme_id;
            END IF;
            RETURN NULL;
        END $$
        """
    )

    # Every other table: a Citus local table on the coordinator, reachable from the workers.
    op.execute(
        """
        DO $$
        DECLARE
            r record;
        BEGIN
            FOR r IN SELECT c.oid::regclass AS t FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'public' AND c.relkind = 'r'
                       -- The outbox is distributed by member in 0023 (a Citus local table
                       -- with an identity column can be neither changed nor distributed).
                       AND c.relname NOT IN ('alembic_version', 'domain_events', 'webhook_deliveries')
                       AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid) LOOP
                PERFORM citus_add_local_table_to_metadata(r.t, cascade_via_foreign_keys := true);
            END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    bind = op.get_bind()
    if _citus(bind):
        raise RuntimeError(
            "the Citus layout cannot be taken back by a migration; restore a single-node dump instead"
        )
