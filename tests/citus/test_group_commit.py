"""Group commit on the cluster (docs/group-commit.md, "On Citus"): a batch holds the postings of
one shard's members and runs on that shard's worker as one single-shard transaction.

The proofs use tests/citus/routing.py; the same postings sent the single-node way (one
``ledger_post_batch`` from the coordinator for members on two workers) make it fail.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import distribution
from loyalty.app import create_app
from loyalty.db import create_posting_pool, plain_url
from loyalty.distribution import ShardMap, hashint8, member_key
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as s
from loyalty.ledger import service
from loyalty.ledger.group_commit import GroupCommitter
from loyalty.ledger.verify import verify
from loyalty.members import schemas as ms
from loyalty.members import service as members
from loyalty.observability.metrics import GROUP_COMMIT_BATCH, GROUP_COMMIT_RETRIES
from loyalty.settings import Settings
from tests.api.helpers import Api
from tests.citus.routing import FannedOut, single_shard_only
from tests.support import make_programme

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url is not None
    pool = await create_posting_pool(settings.database_url, size=8)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def shards(pool: asyncpg.Pool) -> ShardMap:
    async with pool.acquire() as conn:
        return await ShardMap.load(conn)


async def _placements(database_url: str) -> dict[int, int]:
    """Shard id of members -> the port of the node that holds it."""
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await conn.fetch(
            "SELECT p.shardid, p.nodeport FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid) "
            "WHERE s.logicalrelid = 'members'::regclass"
        )
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


def _names_in(shards: ShardMap, programme_id: int, shard: int, count: int, prefix: str) -> list[str]:
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"{prefix}{i}"
        if shards.shard_of(member_key(programme_id, name)) == shard:
            names.append(name)
        i += 1
    return names


async def _two_shards_on_two_nodes(database_url: str) -> tuple[int, int]:
    placements = await _placements(database_url)
    first = min(placements)
    other = next(shard for shard, port in sorted(placements.items()) if port != placements[first])
    return first, other


async def _programme(engine: AsyncEngine, **budgets: int) -> Principal:
    programme = await make_programme(engine)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=0)
    async with engine.begin() as conn:
        for code, cap in budgets.items():
            await service.create_budget(
                conn, who, s.BudgetCreate(code=code, cap=cap, unit_cost_micros=1), None
            )
    return who


async def _enrol(engine: AsyncEngine, who: Principal, names: list[str]) -> None:
    async with engine.begin() as conn:
        for name in names:
            await members.enrol(conn, who, ms.MemberCreate(member_id=name), None)


def _flushes() -> tuple[float, float]:
    """(flushes, postings flushed) so far in this process."""
    count = total = 0.0
    for metric in GROUP_COMMIT_BATCH.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


def _retries(reason: str) -> float:
    for metric in GROUP_COMMIT_RETRIES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("reason") == reason:
                return sample.value
    return 0.0


def _earn(member: str, points: int, budget: str = "base") -> s.EarnRequest:
    return s.EarnRequest(member_id=member, budget=budget, points=points)


async def _available(engine: AsyncEngine, who: Principal, member: str) -> int:
    async with engine.connect() as conn:
        return (await service.balance(conn, who, member)).available


async def test_hashint8_is_postgresqls_and_the_map_names_citus_shard(
    pool: asyncpg.Pool, shards: ShardMap
) -> None:
    rng = random.Random(13)
    values = [0, 1, -1, 2, -2, (1 << 31) - 1, -(1 << 31), 1 << 31, (1 << 32) - 1, 1 << 32, -(1 << 32)]
    values += [INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1]
    values += [rng.randint(INT64_MIN, INT64_MAX) for _ in range(3000)]
    values += [rng.randint(-100_000, 100_000) for _ in range(500)]
    values += [member_key(p, f"m-{i}") for p in (1, 2) for i in range(500)]
    async with pool.acquire() as conn:
        hashed = await conn.fetch(
            "SELECT hashint8(v) AS h, get_shard_id_for_distribution_column('members', v) AS shard "
            "FROM unnest($1::bigint[]) WITH ORDINALITY AS t(v, n) ORDER BY n",
            values,
        )
        anchors = await conn.fetch("SELECT shardid, anchor FROM ledger_anchors")
    assert [hashint8(v) for v in values] == [r["h"] for r in hashed]
    assert [shards.shard_of(v) for v in values] == [r["shard"] for r in hashed]
    assert len(shards) == len(anchors) == 32
    for shardid, anchor in anchors:
        assert shards.anchor(shardid) == anchor
        assert shards.shard_of(anchor) == shardid


async def test_earns_of_one_shard_are_one_call_and_one_single_shard_transaction(
    engine: AsyncEngine, pool: asyncpg.Pool, shards: ShardMap, database_url: str
) -> None:
    who = await _programme(engine, base=1_000_000)
    shard, _ = await _two_shards_on_two_nodes(database_url)
    names = _names_in(shards, who.programme_id, shard, 8, "one-")
    await _enrol(engine, who, names)
    committer = GroupCommitter(pool, flushers=1, max_batch=64, citus=True)
    async with pool.acquire() as conn:  # the map is read before the proof: a catalog read anyway
        committer.shards = await ShardMap.load(conn)
    before = _flushes()
    async with single_shard_only(database_url) as report:
        results = await asyncio.gather(
            *(service.earn(committer, who, _earn(n, 5), uuid.uuid4().hex) for n in names)
        )
    assert report.single_shard_executions > 0
    assert tuple(a - b for a, b in zip(_flushes(), before, strict=True)) == (1, 8)
    assert [msgspec.json.decode(r.body)["member_id"] for r in results] == names
    for name in names:
        assert await _available(engine, who, name) == 5
    async with engine.connect() as conn:
        assert await verify(conn, who.programme_id) == []


async def test_the_proof_fails_for_one_batch_of_members_on_two_workers(
    engine: AsyncEngine, pool: asyncpg.Pool, shards: ShardMap, database_url: str
) -> None:
    # The single-node committer on the cluster: one ledger_post_batch from the coordinator
    # writes both workers' shards, a distributed transaction.
    who = await _programme(engine, base=1_000_000)
    first, other = await _two_shards_on_two_nodes(database_url)
    names = _names_in(shards, who.programme_id, first, 3, "a-") + _names_in(
        shards, who.programme_id, other, 3, "b-"
    )
    await _enrol(engine, who, names)
    committer = GroupCommitter(pool, flushers=1, max_batch=64, citus=False)
    with pytest.raises(FannedOut):
        async with single_shard_only(database_url):
            await asyncio.gather(
                *(service.earn(committer, who, _earn(n, 5), uuid.uuid4().hex) for n in names)
            )


async def test_members_of_two_shards_go_in_one_batch_per_shard(
    engine: AsyncEngine, pool: asyncpg.Pool, shards: ShardMap, database_url: str
) -> None:
    who = await _programme(engine, base=1_000_000)
    first, other = await _two_shards_on_two_nodes(database_url)
    a = _names_in(shards, who.programme_id, first, 3, "a-")
    b = _names_in(shards, who.programme_id, other, 3, "b-")
    names = [a[0], b[0], a[1], b[1], a[2], b[2]]  # interleaved in the queue
    await _enrol(engine, who, names)
    committer = GroupCommitter(pool, flushers=1, max_batch=64, citus=True)
    async with pool.acquire() as conn:
        committer.shards = await ShardMap.load(conn)
    before = _flushes()
    async with single_shard_only(database_url):
        results = await asyncio.gather(
            *(service.earn(committer, who, _earn(n, 7), uuid.uuid4().hex) for n in names)
        )
    assert tuple(x - y for x, y in zip(_flushes(), before, strict=True)) == (2, 6)
    assert [msgspec.json.decode(r.body)["member_id"] for r in results] == names
    for name in names:
        assert await _available(engine, who, name) == 7


async def test_a_stale_shard_map_is_refused_read_again_and_each_posting_goes_alone(
    engine: AsyncEngine, pool: asyncpg.Pool, shards: ShardMap, database_url: str
) -> None:
    who = await _programme(engine, base=1_000_000)
    first, other = await _two_shards_on_two_nodes(database_url)
    names = _names_in(shards, who.programme_id, first, 2, "a-") + _names_in(
        shards, who.programme_id, other, 2, "b-"
    )
    await _enrol(engine, who, names)
    committer = GroupCommitter(pool, flushers=1, max_batch=64, citus=True)
    # A map from before a rebalance, say: one shard covers every hash.
    committer.shards = ShardMap([(first, -(1 << 31), (1 << 31) - 1, shards.anchor(first))])
    before, stale = _flushes(), _retries("stale_map")
    results = await asyncio.gather(
        *(service.earn(committer, who, _earn(n, 9), uuid.uuid4().hex) for n in names)
    )
    assert _retries("stale_map") - stale == 1
    # One batch of four (refused), whose postings then went alone.
    assert tuple(x - y for x, y in zip(_flushes(), before, strict=True)) == (1, 4)
    assert committer.shards is not None and len(committer.shards) == 32
    assert [msgspec.json.decode(r.body)["amount"] for r in results] == [9, 9, 9, 9]
    for name in names:
        assert await _available(engine, who, name) == 9  # the refused batch wrote nothing
    async with engine.connect() as conn:
        assert await verify(conn, who.programme_id) == []


async def test_the_routed_batch_refuses_a_member_of_another_shard_and_writes_nothing(
    engine: AsyncEngine, pool: asyncpg.Pool, shards: ShardMap, database_url: str
) -> None:
    who = await _programme(engine, base=1_000_000)
    first, other = await _two_shards_on_two_nodes(database_url)
    (name,) = _names_in(shards, who.programme_id, first, 1, "a-")
    await _enrol(engine, who, [name])
    route = shards.anchor(other)
    ops = [
        {
            "f": "ledger_earn",
            "a": [who.programme_id, None, None, name, "base", 5, False, None, None, None, None, None, None],
        }
    ]
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.fetch(
                "SELECT * FROM ledger_post_batch_routed($1, $2::jsonb)",
                route,
                msgspec.json.encode(ops).decode(),
            )
        assert refused.value.sqlstate == distribution.STALE_SHARD_MAP
        rows = await conn.fetch(
            "SELECT * FROM ledger_post_batch_routed($1, $2::jsonb)",
            shards.anchor(first),
            msgspec.json.encode(ops).decode(),
        )
    assert rows[0]["op_sqlstate"] is None, rows[0]
    assert await _available(engine, who, name) == 5


async def test_an_earn_bigger_than_its_shard_leaves_the_batch_for_the_coordinator(
    engine: AsyncEngine, pool: asyncpg.Pool, shards: ShardMap, database_url: str
) -> None:
    # 3,200 points over 32 shards: 100 beside each member; 250 needs the other shards.
    who = await _programme(engine, base=3200)
    shard, _ = await _two_shards_on_two_nodes(database_url)
    names = _names_in(shards, who.programme_id, shard, 4, "c-")
    await _enrol(engine, who, names)
    committer = GroupCommitter(pool, flushers=1, max_batch=64, citus=True)
    async with pool.acquire() as conn:
        committer.shards = await ShardMap.load(conn)
    before, retried = _flushes(), _retries("retried")
    points = [250, 5, 5, 5]
    results = await asyncio.gather(
        *(
            service.earn(committer, who, _earn(n, p), uuid.uuid4().hex)
            for n, p in zip(names, points, strict=True)
        )
    )
    assert [msgspec.json.decode(r.body)["amount"] for r in results] == points
    assert _retries("retried") - retried == 1
    # One batch of four; the big earn then went alone, through the coordinator.
    assert tuple(x - y for x, y in zip(_flushes(), before, strict=True)) == (1, 4)
    for name, p in zip(names, points, strict=True):
        assert await _available(engine, who, name) == p
    async with engine.connect() as conn:
        assert await verify(conn, who.programme_id) == []
        remaining = sum(
            r[0]
            for r in (
                await conn.exec_driver_sql(
                    "SELECT b.available FROM account_balances b JOIN budgets bu "
                    "ON bu.programme_id = b.programme_id AND bu.account_id = b.account_id "
                    f"WHERE bu.programme_id = {who.programme_id} AND bu.code = 'base'"
                )
            ).all()
        )
    assert remaining == 3200 - 265


@asynccontextmanager
async def _served(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, GroupCommitter]]:
    """The app served in this test's event loop (as tests/api/test_group_commit.py does), so
    that concurrent requests meet in the committer; one flusher, so that they queue."""
    app = create_app(settings)
    async with app.lifespan():
        committer = app.state.committer
        assert committer is not None and committer.citus, "group commit is on, per shard, on Citus"
        app.state.committer = GroupCommitter(
            committer.pool, flushers=1, max_batch=committer.max_batch, citus=True
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
            yield client, app.state.committer
        await app.state.committer.close()


async def test_sixteen_clients_earning_and_spending_keep_exact_books(
    settings: Settings, engine: AsyncEngine, shards: ShardMap, database_url: str
) -> None:
    programme = await make_programme(engine)
    # Eight members on each of two shards (on two workers), so that batches can form.
    first, other = await _two_shards_on_two_nodes(database_url)
    clients = _names_in(shards, programme.id, first, 8, "c-") + _names_in(
        shards, programme.id, other, 8, "d-"
    )
    async with _served(settings) as (http, _):
        api = Api(http, programme)  # type: ignore[arg-type]
        await api.budget(cap=1_000_000)
        for name in clients:
            await api.enrol(name)
        await _sixteen_clients(api, clients, database_url)
    async with engine.connect() as sa:
        assert await verify(sa, programme.id) == []


async def _sixteen_clients(api: Api, clients: list[str], database_url: str) -> None:
    rounds = 12
    before = _flushes()

    async def one_client(name: str) -> None:
        for i in range(rounds):
            await api.post(
                "/v1/earn",
                {"member_id": name, "budget": "base", "points": 10, "reference": f"{name}-{i}"},
                role="ecommerce",
                key=f"{name}-earn-{i}",
            )
            await api.post(
                "/v1/spend", {"member_id": name, "points": 3}, role="ecommerce", key=f"{name}-spend-{i}"
            )

    await asyncio.gather(*(one_client(name) for name in clients))
    flushes, postings = (x - y for x, y in zip(_flushes(), before, strict=True))
    assert postings == 16 * rounds * 2
    assert flushes < postings, "no posting was batched"
    for name in clients:
        assert (await api.balance(name))["available"] == rounds * 7
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        total = await conn.fetchval(
            "SELECT coalesce(sum(available + pending + held), 0) FROM account_balances WHERE programme_id = $1",
            api.programme.id,
        )
        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT txn_id FROM entries WHERE programme_id = $1 "
            "GROUP BY txn_id HAVING sum(amount) <> 0) t",
            api.programme.id,
        )
        member_sum = await conn.fetchval(
            "SELECT coalesce(sum(e.amount), 0) FROM entries e JOIN members m "
            "ON m.programme_id = e.programme_id AND m.account_id = e.account_id AND m.id = e.member_id WHERE e.programme_id = $1",
            api.programme.id,
        )
    finally:
        await conn.close()
    assert total == 0 and unbalanced == 0
    assert member_sum == 16 * rounds * 7
