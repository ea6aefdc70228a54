"""Shared fixtures: real PostgreSQL and Redis, one migrated database per xdist worker.

Servers come from LOYALTY_DATABASE_URL / LOYALTY_REDIS_URL when set, else embedded ones in
.loyalty/test/ that every worker joins (the last worker out stops them). With LOYALTY_TEST_CITUS=1
(`make test-citus`) PostgreSQL is a local Citus cluster in .loyalty/test/citus/ (a coordinator and
two workers, started here if `make` has not), and each worker's database is created on every node
with the extension and the nodes registered in it before the migrations run. Each worker builds
its own database `loyalty_test_<worker>` with the real Alembic migrations, never create_all,
and uses Redis database number <worker index + 1>. Tests isolate themselves by creating their
own programme, so nothing is truncated between tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from loyalty.db import async_url, create_engine, create_sessionmaker, plain_url
from loyalty.embedded import EmbeddedServers
from loyalty.embedded_citus import CitusCluster
from loyalty.migrate import upgrade_async
from loyalty.settings import Settings

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA_DIR = PROJECT_ROOT / ".loyalty" / "test"
TEST_SECRET_KEY = "test-secret-key-not-for-production-0123456789"
CITUS_DATA_DIR = TEST_DATA_DIR / "citus"

# Database-backed examples have uneven latency; a per-example deadline would only flake.
hypothesis_settings.register_profile("loyalty", deadline=None)
hypothesis_settings.register_profile(
    "ci",
    parent=hypothesis_settings.get_profile("loyalty"),
    derandomize=True,
    print_blob=True,
)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "loyalty")


@dataclass(frozen=True)
class ServerURLs:
    database_url: str  # the server's maintenance database (tests never write to it)
    redis_url: str
    citus: CitusCluster | None = None  # the cluster the database_url is the coordinator of


def citus_run() -> bool:
    """Whether this run is on the local Citus cluster (`make test-citus`)."""
    return os.environ.get("LOYALTY_TEST_CITUS", "") not in ("", "0")


def citus_test_cluster() -> CitusCluster:
    # The test cluster keeps its two-phase commit records: tests/citus proves routing with them.
    return CitusCluster(CITUS_DATA_DIR, workers=2, keep_2pc_records=True)


@pytest.fixture(scope="session")
def servers() -> Iterator[ServerURLs]:
    """PostgreSQL and Redis URLs: from the environment, else embedded servers shared by the workers."""
    database_url = os.environ.get("LOYALTY_DATABASE_URL") or None
    redis_url = os.environ.get("LOYALTY_REDIS_URL") or None
    cluster = None
    if citus_run():
        # Adopted when `make test-citus` started it; `make` stops it, not the workers.
        cluster = citus_test_cluster().start()
        database_url = cluster.database_url()
    embedded = None
    if database_url is None or redis_url is None:
        embedded = EmbeddedServers(
            TEST_DATA_DIR, postgres=database_url is None, redis=redis_url is None
        ).start()
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    try:
        yield ServerURLs(database_url=database_url, redis_url=redis_url, citus=cluster)
    finally:
        if embedded is not None:
            embedded.stop()


@pytest.fixture(scope="session")
def worker_index(worker_id: str) -> int:
    """0 for gw0 (or a run without xdist), 1 for gw1, ..."""
    return int(worker_id[2:]) if worker_id.startswith("gw") else 0


@pytest.fixture(scope="session")
async def database_url(servers: ServerURLs, worker_id: str) -> AsyncIterator[str]:
    """A fresh database for this worker, built by `alembic upgrade head`, dropped at the end.

    The name carries the process id, so that several test runs can share the embedded server.
    """
    name = f"loyalty_test_{worker_id}_{os.getpid()}"
    if servers.citus is not None:
        url = _prepare_citus_database(servers.citus, name)
        await upgrade_async(url)
        yield url
        servers.citus.drop_database(name)
        return
    admin = await asyncpg.connect(plain_url(servers.database_url))
    try:
        # Databases of earlier runs that were killed before they could drop their own.
        stale = await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'loyalty_test_%'")
        for row in stale:
            pid = row["datname"].rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(servers.database_url, name)
    await upgrade_async(url)
    yield url
    admin = await asyncpg.connect(plain_url(servers.database_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _prepare_citus_database(cluster: CitusCluster, name: str) -> str:
    """``name`` on every node of the cluster, with the extension and the nodes registered."""
    for stale in cluster.databases("loyalty_test_%"):
        pid = stale.rsplit("_", 1)[-1]
        if stale == name or (pid.isdigit() and not _alive(int(pid))):
            cluster.drop_database(stale)
    return cluster.prepare_database(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
async def redis_url(servers: ServerURLs, worker_index: int) -> str:
    """This worker's own Redis database, emptied at the start of the session."""
    url = _with_redis_db(servers.redis_url, worker_index + 1)
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return url


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=TEST_DATA_DIR,
        secret_key=TEST_SECRET_KEY,
        worker_enabled=False,
        demo=False,
        db_pool_size=5,
        log_level="WARNING",
        # The webhook tests' receivers listen on 127.0.0.1.
        webhook_allow_private_targets=True,
        # Every test request comes from one address, and many tests check 401s on purpose.
        auth_failure_limit=0,
        # A budget's creation writes a shard on every node of the test cluster, which shares two
        # cores with the other xdist worker's; the production default of 2 s is for one node.
        db_command_timeout_seconds=10.0 if citus_run() else 2.0,
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that really commit: for concurrency tests that need several transactions."""
    return create_sessionmaker(engine)


@pytest.fixture
async def db_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside an outer transaction that is rolled back after the test.

    session.commit() inside the test releases a SAVEPOINT, so code that commits still leaves
    nothing behind.
    """
    async with engine.connect() as connection:
        outer = await connection.begin()
        session = AsyncSession(
            bind=connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
            autoflush=False,
        )
        try:
            yield session
        finally:
            await session.close()
            if outer.is_active:
                await outer.rollback()


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    from loyalty.app import create_app

    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    from litestar.testing import AsyncTestClient

    async with AsyncTestClient(app=app) as client:
        yield client


# --- URL helpers ------------------------------------------------------------------------------


def _with_database(url: str, database: str) -> str:
    rendered = make_url(async_url(url)).set(database=database).render_as_string(hide_password=False)
    return plain_url(rendered)


def _with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "db"]
    if parts.scheme == "unix":
        # redis-py and arq read the database of a unix-socket URL from ?db=.
        return urlunsplit(parts._replace(query=urlencode([*query, ("db", str(db))])))
    return urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))
