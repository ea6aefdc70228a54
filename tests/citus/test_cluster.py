"""The local cluster itself: every node answers and a distributed table spreads over the workers."""

from __future__ import annotations

import asyncpg

from loyalty.db import plain_url
from tests.citus.conftest import keys_by_node
from tests.conftest import ServerURLs


async def test_the_test_database_knows_the_coordinator_and_two_active_workers(database_url: str) -> None:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await connection.fetch(
            "SELECT groupid, isactive, shouldhaveshards FROM pg_dist_node ORDER BY groupid"
        )
        health = await connection.fetch("SELECT * FROM citus_check_cluster_node_health()")
    finally:
        await connection.close()
    assert [(row["groupid"] == 0, row["isactive"]) for row in rows] == [
        (True, True),
        (False, True),
        (False, True),
    ]
    # The coordinator holds no shards: member data lives on the workers.
    assert [row["shouldhaveshards"] for row in rows] == [False, True, True]
    # Every node reaches every other (3 x 3 pairs).
    assert len(health) == 9
    assert all(row["result"] for row in health)


def test_the_cluster_reports_every_node_running(servers: ServerURLs) -> None:
    assert servers.citus is not None
    statuses = servers.citus.status()
    assert [status.node.name for status in statuses] == ["coordinator", "worker1", "worker2"]
    assert all(status.running for status in statuses)
    assert servers.database_url == servers.citus.database_url()


async def test_a_distributed_tables_shards_lie_on_both_workers(database_url: str, toy: str) -> None:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        placements = await connection.fetch(
            "SELECT nodeport, count(*) AS shards FROM pg_dist_shard_placement "
            "JOIN pg_dist_shard USING (shardid) WHERE logicalrelid = $1::regclass GROUP BY nodeport",
            toy,
        )
        workers = await connection.fetch("SELECT nodeport FROM pg_dist_node WHERE groupid > 0")
        total = await connection.fetchval(f"SELECT count(*) FROM {toy}")
    finally:
        await connection.close()
    assert {row["nodeport"] for row in placements} == {row["nodeport"] for row in workers}
    assert sorted(row["shards"] for row in placements) == [4, 4]
    assert total == 100
    # Rows really are split: some keys live on each worker.
    assert all(len(keys) > 10 for keys in (await keys_by_node(database_url, toy)).values())
