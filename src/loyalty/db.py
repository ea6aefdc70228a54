"""Database plumbing: metadata, engine and session factory. Nothing is built at import time."""

from __future__ import annotations

import asyncpg
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

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


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs (as libpq tools print them) and pick the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def plain_url(url: str) -> str:
    """The libpq/asyncpg form of a URL (no SQLAlchemy driver suffix)."""
    return "postgresql://" + async_url(url)[len("postgresql+asyncpg://") :]


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 0, echo: bool = False) -> AsyncEngine:
    # A fixed pool by default: under load, overflow connections would be opened and closed per
    # request, which costs more than waiting a moment for a pooled one.
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=30,
        pool_pre_ping=False,
        echo=echo,
        connect_args={"server_settings": {"application_name": "loyalty"}},
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


async def create_posting_pool(url: str, *, size: int) -> asyncpg.Pool:
    """A plain asyncpg pool for single-statement postings, each call its own transaction."""
    return await asyncpg.create_pool(
        plain_url(url),
        min_size=1,
        max_size=size,
        reset=_reset_posting_connection,
        server_settings={"application_name": "loyalty"},
    )
