"""The servers the suite runs on answer, and the embedded ones keep their data across a restart."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from loyalty.db import plain_url
from loyalty.embedded import EmbeddedServers

TEST_DATA_DIR = Path(__file__).resolve().parents[2] / ".loyalty" / "test"


async def test_postgres_answers(database_url: str) -> None:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        assert await connection.fetchval("SELECT 1") == 1
        # The worker's database was built by the migrations, not by create_all.
        assert await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    finally:
        await connection.close()


async def test_redis_answers(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.fixture
def scratch_dir(worker_id: str) -> Iterator[Path]:
    # Not tmp_path: as root, pgserver opens the path's parents to its own user, and pytest's
    # base temp dir is meant to stay private.
    path = TEST_DATA_DIR / f"restart-{worker_id}"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_embedded_servers_keep_data_across_a_restart(scratch_dir: Path) -> None:
    with EmbeddedServers(scratch_dir) as servers:
        connection = await asyncpg.connect(plain_url(servers.database_url))
        await connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        assert await connection.fetchval("SHOW max_connections") == "200"
        await connection.close()
        client = redis.asyncio.Redis.from_url(servers.redis_url)
        await client.set("kept", "yes")
        await client.aclose()

    with EmbeddedServers(scratch_dir) as servers:
        connection = await asyncpg.connect(plain_url(servers.database_url))
        assert await connection.fetchval("SELECT n FROM kept") == 42
        await connection.close()
        client = redis.asyncio.Redis.from_url(servers.redis_url)
        assert await client.get("kept") == b"yes"
        await client.aclose()
