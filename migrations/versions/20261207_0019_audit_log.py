"""audit_log: who changed what, when, from what to what, and why; append-only

Revision ID: 0019
Revises: 0018

Rows are written by loyalty.audit.record in the transaction of the change they describe. A
trigger refuses UPDATE, DELETE and TRUNCATE on the table, so the application (which owns the
table) cannot rewrite history either; only dropping the trigger, a schema change, could.
The function is defined here and nowhere else: this revision never changes once shipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_audit_log_programme_at": ["programme_id", "at", "id"],
    "ix_audit_log_programme_entity": ["programme_id", "entity_type", "entity_id", "at", "id"],
    "ix_audit_log_programme_actor": ["programme_id", "actor", "at", "id"],
    "ix_audit_log_programme_action": ["programme_id", "action", "at", "id"],
}


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("programme_id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("key_id", sa.BigInteger(), nullable=True),
        sa.Column("operator_id", sa.BigInteger(), nullable=True),
        # Byte order ("C"): the ?action=subject.* filter is a range on this column, and a
        # locale's collation would skip the '.' that ends the subject.
        sa.Column("action", sa.Text(collation="C"), nullable=False),
        sa.Column("entity_type", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.Text(), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["programme_id"], ["programmes.id"], name=op.f("fk_audit_log_programme_id_programmes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    for name, columns in _INDEXES.items():
        op.create_index(name, "audit_log", columns)
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Rows of the audit trail are never changed or removed.';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
    op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
    op.execute("DROP FUNCTION audit_log_append_only()")
    for name in _INDEXES:
        op.drop_index(name, table_name="audit_log")
    op.drop_table("audit_log")
