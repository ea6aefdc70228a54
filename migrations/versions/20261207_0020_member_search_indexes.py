"""member search indexes: id prefix in byte order, attributes by containment

Revision ID: 0020
Revises: 0019

The console finds members by the beginning of their id and by an attribute (email = ...).
The unique (programme_id, external_id) index follows the database's collation, which cannot
serve a prefix range in every locale; an index on ``external_id COLLATE "C"`` can, and also
gives the keyset order of the results. A GIN index with jsonb_path_ops serves
``attributes @> '{"email": "..."}'``.

Both are built CONCURRENTLY, outside the migration's transaction, so that a programme with a
million members keeps enrolling while they build. A build that was interrupted leaves an
invalid index behind: drop it and run the migration again.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_members_external_id_c "
            'ON members (programme_id, (external_id COLLATE "C"))'
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_members_attributes "
            "ON members USING gin (attributes jsonb_path_ops)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_members_attributes")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_members_external_id_c")
