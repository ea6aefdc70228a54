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

from loyalty import distribution
from loyalty.db import create_engine
from loyalty.embedded_citus import CitusCluster
from loyalty.ledger.verify import verify
from loyalty.migrate import upgrade_async
from tests.conftest import TEST_DATA_DIR
from tests.support import make_programme


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


async def test_earns_go_on_while_the_ledger_is_rebalanced_onto_a_third_worker(
    own_cluster: CitusCluster,
) -> None:
    """The real schema: earns through the posting function, delegated to their members' nodes,
    while citus_rebalance_start moves the member shards (and everything co-located with them)
    onto a new worker. Every acknowledged earn is in the balances after, and verify is clean."""
    url = own_cluster.prepare_database("rebalance_ledger")
    await upgrade_async(url)
    engine = create_engine(url)
    admin = await asyncpg.connect(url)
    try:
        programme = await make_programme(engine)
        p = programme.id
        members = [f"m-{i}" for i in range(40)]
        for member in members:
            await admin.execute("SELECT ledger_open_member($1, $2, '{}'::jsonb)", p, member)
        await admin.execute(
            "SELECT * FROM ledger_create_budget($1, NULL, NULL, 'base', 'Base', 10000000, 1000, NULL, NULL, "
            "NULL, NULL, 1, 'test')",
            p,
        )
        earn = (
            "SELECT replayed, body FROM ledger_earn($1, $2, '\\x01', $3, 'base', 1, false, NULL, NULL, "
            "NULL, NULL, NULL, 'test', $4)"
        )
        acknowledged: dict[str, int] = dict.fromkeys(members, 0)
        moving = True
        errors: list[str] = []

        async def earn_load(offset: int) -> None:
            writer = await asyncpg.connect(url)
            try:
                n = 0
                while moving:
                    member = members[(n * 7 + offset) % len(members)]
                    n += 1
                    key = f"load-{offset}-{n}"
                    try:
                        await writer.fetchrow(earn, p, key, member, distribution.member_key(p, member))
                    except asyncpg.PostgresError as exc:
                        # Refused, not acknowledged: it must not be there either.
                        errors.append(f"{exc.sqlstate} {exc}")
                        continue
                    acknowledged[member] += 1
            finally:
                await writer.close()

        loads = [asyncio.create_task(earn_load(i)) for i in range(3)]
        await asyncio.sleep(0.5)
        third = own_cluster.add_worker()
        own_cluster.register_worker("rebalance_ledger", third)
        await admin.execute("SELECT citus_rebalance_start(shard_transfer_mode => 'block_writes')")
        await admin.execute("SELECT citus_rebalance_wait()")
        await asyncio.sleep(0.3)
        moving = False
        await asyncio.gather(*loads)

        moved = await admin.fetchval(
            "SELECT count(*) FROM pg_dist_shard_placement JOIN pg_dist_shard USING (shardid) "
            "WHERE logicalrelid = 'members'::regclass AND nodeport = $1",
            third.port,
        )
        print(
            f"rebalance under earns: {sum(acknowledged.values())} acknowledged, {len(errors)} refused, "
            f"{moved} of 32 member shards moved to the third worker"
        )
        assert moved > 0, "no member shard moved to the third worker"
        assert sum(acknowledged.values()) > 0
        for member, count in acknowledged.items():
            available = await admin.fetchval(
                "SELECT b.available FROM account_balances b JOIN members m ON m.account_id = b.account_id "
                "AND m.id = b.member_id WHERE m.programme_id = $1 AND m.external_id = $2 AND m.id = $3",
                p,
                member,
                distribution.member_key(p, member),
            )
            assert available == count, (member, available, count, errors[:3])
        async with engine.connect() as conn:
            assert await verify(conn, p) == []
    finally:
        await admin.close()
        await engine.dispose()
