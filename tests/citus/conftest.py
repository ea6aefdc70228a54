"""The cluster's own tests run only on `make test-citus` (LOYALTY_TEST_CITUS=1)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from loyalty.db import plain_url
from tests.conftest import citus_run


@pytest.fixture(autouse=True)
def _needs_citus() -> None:
    if not citus_run():
        pytest.skip("needs the Citus cluster: make test-citus")


_names = itertools.count()


@pytest.fixture
async def toy(database_url: str) -> AsyncIterator[str]:
    """A distributed table of 8 shards with rows 1..100, and `bump`/`bump_all` functions
    delegated by its key: the routing proof's own specimen, dropped after the test."""
    name = f"toy_{os.getpid()}_{next(_names)}"
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await connection.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        await connection.execute(f"SELECT create_distributed_table('{name}', 'id', shard_count => 8)")
        await connection.execute(f"INSERT INTO {name} (id) SELECT g FROM generate_series(1, 100) AS g")
        await connection.execute(
            f"CREATE FUNCTION {name}_bump(a bigint, b bigint) RETURNS void LANGUAGE sql AS "
            f"$$ UPDATE {name} SET v = v + 1 WHERE id = a; UPDATE {name} SET v = v + 1 WHERE id = b $$"
        )
        await connection.execute(
            f"SELECT create_distributed_function('{name}_bump(bigint, bigint)', 'a', colocate_with => '{name}')"
        )
        await connection.execute(
            f"CREATE FUNCTION {name}_bump_all(a bigint) RETURNS void LANGUAGE sql AS "
            f"$$ UPDATE {name} SET v = v + 1 $$"
        )
        await connection.execute(
            f"SELECT create_distributed_function('{name}_bump_all(bigint)', 'a', colocate_with => '{name}')"
        )
        yield name
        await connection.execute(f"DROP FUNCTION {name}_bump, {name}_bump_all")
        await connection.execute(f"DROP TABLE {name}")
    finally:
        await connection.close()


async def keys_by_node(database_url: str, table: str, keys: range = range(1, 101)) -> dict[int, list[int]]:
    """Node port -> the keys of ``table`` whose shard lies there."""
    return await _group_keys(
        database_url,
        "SELECT k, p.nodeport AS place FROM unnest($1::bigint[]) AS k, "
        "LATERAL (SELECT nodeport FROM pg_dist_shard_placement "
        "  WHERE shardid = get_shard_id_for_distribution_column($2, k)) AS p",
        table,
        keys,
    )


async def keys_by_shard(database_url: str, table: str, keys: range = range(1, 101)) -> dict[int, list[int]]:
    """Shard id -> the keys of ``table`` in it."""
    return await _group_keys(
        database_url,
        "SELECT k, get_shard_id_for_distribution_column($2, k) AS place FROM unnest($1::bigint[]) AS k",
        table,
        keys,
    )


async def _group_keys(database_url: str, sql: str, table: str, keys: range) -> dict[int, list[int]]:
    """The keys grouped by the ``place`` column that ``sql`` gives each (k, place) row."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await connection.fetch(sql, list(keys), table)
    finally:
        await connection.close()
    found: dict[int, list[int]] = {}
    for row in rows:
        found.setdefault(row["place"], []).append(row["k"])
    return found
