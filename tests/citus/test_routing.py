"""`single_shard_only` itself: it lets a single-shard transaction through and fails on a fan-out.

Each kind of fan-out the hot paths must avoid is done once on a toy distributed table, and the
helper must catch it; a helper that never fails would prove nothing about the ledger.
"""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.db import plain_url
from tests.citus.conftest import keys_by_node, keys_by_shard
from tests.citus.routing import FannedOut, single_shard_only


@pytest.fixture
async def connection(database_url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(plain_url(database_url))
    yield connection
    await connection.close()


async def two_keys_on_two_workers(database_url: str, table: str) -> tuple[int, int]:
    first, second = list((await keys_by_node(database_url, table)).values())
    return first[0], second[0]


async def two_keys_in_two_shards_of_one_worker(database_url: str, table: str) -> tuple[int, int]:
    by_node = await keys_by_node(database_url, table)
    node_keys = set(next(iter(by_node.values())))
    shards = [keys for keys in (await keys_by_shard(database_url, table)).values() if keys[0] in node_keys]
    return shards[0][0], shards[1][0]


async def test_a_single_shard_update_passes(
    database_url: str, toy: str, connection: asyncpg.Connection
) -> None:
    async with single_shard_only(database_url, connection=connection) as report:
        await connection.execute(f"UPDATE {toy} SET v = v + 1 WHERE id = 7")
    assert report.single_shard_executions >= 1
    assert report.shard_groups_touched == 1


async def test_a_single_shard_transaction_of_several_statements_passes(
    database_url: str, toy: str, connection: asyncpg.Connection
) -> None:
    # Two keys of one shard, as a member's rows are by their shared distribution key.
    same_shard = next(keys for keys in (await keys_by_shard(database_url, toy)).values() if len(keys) > 1)
    a, b = same_shard[:2]
    async with single_shard_only(database_url, connection=connection) as report, connection.transaction():
        await connection.execute(f"UPDATE {toy} SET v = v + 1 WHERE id = {a}")
        await connection.execute(f"UPDATE {toy} SET v = v + 1 WHERE id = {b}")
        assert await connection.fetchval(f"SELECT v FROM {toy} WHERE id = {a}") == 1
    assert report.single_shard_executions >= 3
    assert report.shard_groups_touched == 1


async def test_a_delegated_function_on_one_shard_passes(
    database_url: str, toy: str, connection: asyncpg.Connection
) -> None:
    async with single_shard_only(database_url, connection=connection):
        await connection.execute(f"SELECT {toy}_bump(7, 7)")


async def test_a_multi_shard_update_fails_at_once_on_the_watched_connection(
    database_url: str, toy: str, connection: asyncpg.Connection
) -> None:
    with pytest.raises(asyncpg.PostgresError, match="multi-task query"):
        async with single_shard_only(database_url, connection=connection):
            await connection.execute(f"UPDATE {toy} SET v = v + 1")


async def test_a_multi_shard_update_on_another_connection_fails(
    database_url: str, toy: str, engine: AsyncEngine
) -> None:
    # The application's own pool: not watched, so the cluster's counters must tell.
    with pytest.raises(FannedOut, match="multi-shard execution"):
        async with single_shard_only(database_url), engine.begin() as conn:
            await conn.execute(text(f"UPDATE {toy} SET v = v + 1"))


async def test_a_transaction_on_two_workers_fails(database_url: str, toy: str, engine: AsyncEngine) -> None:
    a, b = await two_keys_on_two_workers(database_url, toy)
    with pytest.raises(FannedOut, match="two-phase commit"):
        async with single_shard_only(database_url), engine.begin() as conn:
            await conn.execute(text(f"UPDATE {toy} SET v = v + 1 WHERE id = {a}"))
            await conn.execute(text(f"UPDATE {toy} SET v = v + 1 WHERE id = {b}"))


async def test_a_transaction_on_two_shards_of_one_worker_fails_on_the_watched_connection(
    database_url: str, toy: str, engine: AsyncEngine
) -> None:
    # One worker, one connection, one-phase commit: only the remote commands name both shards.
    a, b = await two_keys_in_two_shards_of_one_worker(database_url, toy)
    async with engine.connect() as conn:
        with pytest.raises(FannedOut, match="touched 2 shard groups"):
            async with single_shard_only(database_url, connection=conn), conn.begin():
                await conn.execute(text(f"UPDATE {toy} SET v = v + 1 WHERE id = {a}"))
                await conn.execute(text(f"UPDATE {toy} SET v = v + 1 WHERE id = {b}"))


async def test_a_delegated_function_that_reaches_the_other_worker_fails(
    database_url: str, toy: str, connection: asyncpg.Connection
) -> None:
    # The call is one single-shard statement for the coordinator; its worker coordinates a 2PC.
    a, b = await two_keys_on_two_workers(database_url, toy)
    with pytest.raises(FannedOut, match=r"127\.0\.0\.1:\d+: 1 two-phase commit"):
        async with single_shard_only(database_url, connection=connection):
            await connection.execute(f"SELECT {toy}_bump({a}, {b})")


async def test_a_delegated_function_that_runs_a_multi_shard_query_fails(
    database_url: str, toy: str, connection: asyncpg.Connection
) -> None:
    # The multi-task check of the watched session does not reach the worker; its counter does.
    with pytest.raises(FannedOut, match=r"127\.0\.0\.1:\d+: 1 multi-shard execution"):
        async with single_shard_only(database_url, connection=connection):
            await connection.execute(f"SELECT {toy}_bump_all(7)")
