"""Models and migrations must not drift: autogenerate against the migrated database finds nothing."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import loyalty.models_registry  # noqa: F401  (every table on db.metadata)
from loyalty import sql_files
from loyalty.db import metadata
from loyalty.migrate import alembic_config


def _diff(connection: Connection) -> list[Any]:
    # The record table of the SQL files is the migration tool's own, as alembic_version is.
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": sql_files.include_name}
    )
    return list(compare_metadata(context, metadata))


async def test_models_match_migrations(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        diff = await connection.run_sync(_diff)

    assert diff == [], "models and migrations differ; write a migration for:\n" + "\n".join(map(str, diff))


def test_migrations_have_a_single_head(database_url: str) -> None:
    heads = ScriptDirectory.from_config(alembic_config(database_url)).get_heads()

    assert len(heads) <= 1, f"several Alembic heads, merge them: {heads}"
