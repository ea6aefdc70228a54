"""Database plumbing: metadata, engine and session factory. Nothing is built at import time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeAlias, TypeVar

import asyncpg
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    metadata = metadata


# A posting function runs on a SQLAlchemy connection (inside a caller's transaction: jobs,
# tests, the demo) or on a plain asyncpg connection of the posting pool (the HTTP write path,
# where the call is its own transaction).
PostingConnection: TypeAlias = AsyncConnection | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs (as libpq tools print them) and pick the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def plain_url(url: str) -> str:
    """The libpq/asyncpg form of a URL (no SQLAlchemy driver suffix)."""
    return "postgresql://" + async_url(url)[len("postgresql+asyncpg://") :]


# Defaults for tools and the worker: generous, but never "wait forever" on a dead server.
CONNECT_TIMEOUT = 10.0
POOL_TIMEOUT = 30.0


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 0,
    echo: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT,
    pool_timeout: float = POOL_TIMEOUT,
    command_timeout: float | None = None,
) -> AsyncEngine:
    """An engine whose every wait is bounded: opening a connection (``connect_timeout``),
    waiting for a pooled one (``pool_timeout``) and, when given, each statement
    (``command_timeout``: asyncpg cancels the statement on the server and raises TimeoutError).
    The API passes short ones so that a dead or frozen server gives a quick 503, not a hang.
    No pre-ping: a connection that died is invalidated on its first error and replaced."""
    # A fixed pool by default: under load, overflow connections would be opened and closed per
    # request, which costs more than waiting a moment for a pooled one.
    connect_args: dict[str, object] = {
        "server_settings": {"application_name": "loyalty"},
        "timeout": connect_timeout,
    }
    if command_timeout is not None:
        connect_args["command_timeout"] = command_timeout
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=False,
        echo=echo,
        connect_args=connect_args,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def _reset_posting_connection(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset sends four statements (unlock advisory locks, CLOSE ALL, UNLISTEN,
    # RESET ALL) on every release: a second round trip per posting. Posting calls change no
    # session state (their locks are transaction-scoped), so only an open transaction, left by
    # a cancelled call, needs undoing.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_posting_pool(
    url: str,
    *,
    size: int,
    connect_timeout: float = CONNECT_TIMEOUT,
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    """A plain asyncpg pool for single-statement postings, each call its own transaction.

    Built lazily (min_size=0): the API starts, and answers 503, while PostgreSQL is down, and a
    connection is opened on first use. Acquiring is bounded by the caller (``acquire(timeout=)``);
    opening a connection by ``connect_timeout``; each statement by
    ``command_timeout``. A connection that broke is closed by asyncpg and reopened on demand."""
    return await asyncpg.create_pool(
        plain_url(url),
        min_size=0,
        max_size=size,
        reset=_reset_posting_connection,
        server_settings={"application_name": "loyalty"},
        timeout=connect_timeout,
        command_timeout=command_timeout,
    )


async def within(deadline: float | None, work: Awaitable[T]) -> T:
    """``work`` if it is done by ``deadline`` (event-loop time; None: no bound), else
    TimeoutError at the deadline. Unlike ``asyncio.timeout``, the answer does not wait for the
    cancelled work to clean up: returning a connection to a hung server (its rollback) is
    bounded by the statement timeout, and is left to finish on its own."""
    if deadline is None:
        return await work
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    if not done:
        task.cancel()
        # Its outcome (a CancelledError or the cleanup's error) is of no one's interest now.
        task.add_done_callback(_drop_outcome)
        raise TimeoutError("the database did not answer within the request's deadline")
    return task.result()


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
