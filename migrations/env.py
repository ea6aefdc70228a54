"""Alembic environment: async (asyncpg), target metadata from every domain's models.

After the versioned revisions, a run that ends at head applies the SQL function files whose
checksum changed (loyalty.sql_files, the repeatable migrations); a run that ends below head
forgets the recorded checksums, so the next upgrade applies every file again.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import loyalty.models_registry  # noqa: F401  (registers every table on db.metadata)
from loyalty import sql_files
from loyalty.db import async_url, metadata

config = context.config
# `loyalty migrate` configures logging itself; only the plain `alembic` command needs this.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("LOYALTY_DATABASE_URL")
    if not url:
        raise RuntimeError("set LOYALTY_DATABASE_URL (or sqlalchemy.url) to run migrations")
    return async_url(url)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        include_name=sql_files.include_name,
        # One transaction per migration: a failure leaves the database at the last good revision.
        transaction_per_migration=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
        if context.get_revision_argument() in ("head", "heads", *_script_heads()):
            for statement in sql_files.offline_script():
                context.execute(statement)


def _script_heads() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(config).get_heads())


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
    # Committed by run_migrations_online, in one transaction with the records.
    if set(context.get_context().get_current_heads()) == set(_script_heads()):
        sql_files.apply_changed(connection)
    else:
        sql_files.forget(connection)


async def run_migrations_online() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
