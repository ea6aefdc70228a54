"""The servers the suite runs on answer, and the embedded ones keep their data across a restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


_JOIN_AND_LEAVE = """
import logging, os, sys
from pathlib import Path
from loyalty.embedded import EmbeddedServers

# A log stream that is closed before the interpreter exits, as pytest's capture and Litestar's
# queue listener are: a log call from an exit hook would print '--- Logging error ---'.
stream = open(os.devnull, "w")
logging.basicConfig(level=logging.DEBUG, stream=stream)
servers = EmbeddedServers(Path(sys.argv[1]), redis=False).start()
servers.stop()
stream.close()
"""


def test_leaving_the_embedded_server_logs_nothing_at_exit(servers: object) -> None:
    # `servers` keeps the suite's embedded PostgreSQL running, so the child only joins it.
    child = subprocess.run(
        [sys.executable, "-c", _JOIN_AND_LEAVE, str(TEST_DATA_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert child.returncode == 0, child.stderr
    assert "Logging error" not in child.stderr
