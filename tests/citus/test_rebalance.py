"""A third worker joins and the shards are rebalanced onto it while writes go on.

On a cluster of its own (under the test data dir, not pytest's tmp_path: the server user must
reach it, and pytest makes its own temporary root private again), so that the shared test
cluster keeps its two workers for the other suites.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator

import asyncpg
import pytest

from loyalty.embedded_citus import CitusCluster
from tests.conftest import TEST_DATA_DIR


@pytest.fixture
def own_cluster() -> Iterator[CitusCluster]:
    data_dir = TEST_DATA_DIR / f"citus-rebalance-{os.getpid()}"
    shutil.rmtree(data_dir, ignore_errors=True)
    cluster = CitusCluster(data_dir, workers=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
    assert not any(status.running for status in cluster.status())
    shutil.rmtree(data_dir)


async def placements(connection: asyncpg.Connection) -> dict[int, int]:
    rows = await connection.fetch(
        "SELECT nodeport, count(*) AS shards FROM pg_dist_shard_placement "
        "JOIN pg_dist_shard USING (shardid) WHERE logicalrelid = 'counters'::regclass GROUP BY nodeport"
    )
    return {row["nodeport"]: row["shards"] for row in rows}


async def test_a_third_worker_takes_shards_while_writes_go_on(own_cluster: CitusCluster) -> None:
    url = own_cluster.prepare_database("rebalance")
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("CREATE TABLE counters (id bigint PRIMARY KEY, n bigint NOT NULL DEFAULT 0)")
        await admin.execute("SELECT create_distributed_table('counters', 'id', shard_count => 6)")
        await admin.execute("INSERT INTO counters (id) SELECT g FROM generate_series(1, 600) AS g")
        assert sorted((await placements(admin)).values()) == [3, 3]

        acknowledged = 0
        moving = True

        async def write_load() -> None:
            nonlocal acknowledged
            writer = await asyncpg.connect(url)
            try:
                key = 0
                while moving:
                    key = key % 600 + 1
                    # Shard moves block writes to a shard only briefly at their end.
                    await writer.execute("UPDATE counters SET n = n + 1 WHERE id = $1", key)
                    acknowledged += 1
            finally:
                await writer.close()

        load = asyncio.create_task(write_load())
        await asyncio.sleep(0.2)
        third = own_cluster.add_worker()
        own_cluster.register_worker("rebalance", third)
        await admin.execute("SELECT citus_rebalance_start()")
        await admin.execute("SELECT citus_rebalance_wait()")
        moving = False
        await load

        shards = await placements(admin)
        assert third.port in shards
        assert sorted(shards.values()) == [2, 2, 2]
        # Every acknowledged write is there, after the moves.
        assert acknowledged > 0
        assert await admin.fetchval("SELECT sum(n) FROM counters") == acknowledged
        assert await admin.fetchval("SELECT count(*) FROM counters") == 600
        jobs = await admin.fetch("SELECT state FROM pg_dist_background_job")
        assert [row["state"] for row in jobs] == ["finished"]
    finally:
        await admin.close()
    assert [status.node.name for status in own_cluster.status()] == [
        "coordinator",
        "worker1",
        "worker2",
        "worker3",
    ]
