"""The worker's ledger jobs on the cluster: what is due is listed across shards, then each
member's hold timeout, vesting or expiry is a single-shard transaction on its node, and the
books stay balanced (docs/scaling.md, "Jobs on Citus")."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.ledger import repository, tasks
from loyalty.ledger.verify import verify
from tests.api.helpers import Api
from tests.citus.routing import FannedOut, single_shard_only
from tests.support import make_programme

MEMBERS = [f"j-{i}" for i in range(6)]


@pytest.fixture
async def api(client: AsyncTestClient[Any], engine: AsyncEngine) -> Api:
    return Api(client, await make_programme(engine))


async def _due_everything(api: Api, engine: AsyncEngine) -> None:
    """Each member: 100 points that expire, 50 pending, a hold of 30; then time passes."""
    await api.budget(cap=100_000)
    for i, member in enumerate(MEMBERS):
        await api.enrol(member)
        await api.post(
            "/v1/earn",
            {"member_id": member, "budget": "base", "points": 100, "expiry": {"days": 30}},
            role="ecommerce",
            key=f"e-{i}",
        )
        await api.post(
            "/v1/earn",
            {"member_id": member, "budget": "base", "points": 50, "pending_days": 14},
            role="ecommerce",
            key=f"p-{i}",
        )
        await api.post("/v1/holds", {"member_id": member, "points": 30}, role="ecommerce", key=f"h-{i}")
    async with engine.begin() as conn:
        p = {"p": api.programme.id}
        await conn.execute(
            text("UPDATE holds SET expires_at = now() - interval '1 s' WHERE programme_id = :p"), p
        )
        await conn.execute(
            text("UPDATE lots SET vests_at = now() - interval '1 s' WHERE programme_id = :p AND NOT vested"),
            p,
        )


async def _balances(api: Api) -> dict[str, tuple[int, int, int]]:
    out = {}
    for member in MEMBERS:
        body = (await api.get(f"/v1/members/{member}/balance", role="ecommerce")).json()
        out[member] = (body["available"], body["pending"], body["held"])
    return out


async def test_each_members_job_is_one_single_shard_transaction(
    api: Api, database_url: str, engine: AsyncEngine
) -> None:
    await _due_everything(api, engine)
    async with engine.connect() as conn:
        holds = await repository.due_for_job(conn, "holds", 100)
        vesting = await repository.due_for_job(conn, "vest", 100)
    assert len(holds) == len(MEMBERS) and len(vesting) == len(MEMBERS)
    for job, items in (("holds", holds), ("vest", vesting)):
        for item in items:
            async with single_shard_only(database_url) as report, engine.begin() as conn:
                assert await repository.run_member_job(conn, job, item) == 1
            assert report.single_shard_executions >= 1
    # Held points came back, pending points vested: 100 + 50 available each.
    assert set((await _balances(api)).values()) == {(150, 0, 0)}

    # Expiry: the lots of 100 are past their date now; each member's expiry, with its breakage
    # leg on the breakage shard beside the member, stays on one shard as well.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE lots SET expires_at = now() - interval '1 s' WHERE programme_id = :p AND expires_at IS NOT NULL"
            ),
            {"p": api.programme.id},
        )
    async with engine.connect() as conn:
        expiring = await repository.due_for_job(conn, "expire", 100)
    assert len(expiring) == len(MEMBERS)
    for item in expiring:
        async with single_shard_only(database_url), engine.begin() as conn:
            assert await repository.run_member_job(conn, "expire", item) == 1
    assert set((await _balances(api)).values()) == {(50, 0, 0)}
    # Done twice, nothing more happens.
    for item in expiring:
        async with engine.begin() as conn:
            assert await repository.run_member_job(conn, "expire", item) == 0
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []
        breakage = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(ab.available), 0) FROM account_balances ab JOIN accounts a "
                    "ON a.programme_id = ab.programme_id AND a.id = ab.account_id "
                    "WHERE a.programme_id = :p AND a.kind = 'breakage'"
                ),
                {"p": api.programme.id},
            )
        ).scalar_one()
    assert breakage == 100 * len(MEMBERS)


async def test_the_worker_tasks_run_on_the_cluster_without_a_distributed_transaction(
    api: Api, database_url: str, engine: AsyncEngine
) -> None:
    await _due_everything(api, engine)
    ctx = {"engine": engine}
    with pytest.raises(FannedOut) as fanned:
        # The listing reads every shard (that much fans out, by design) ...
        async with single_shard_only(database_url) as report:
            assert await tasks.expire_holds(ctx) == len(MEMBERS)
            assert await tasks.vest_points(ctx) == len(MEMBERS)
    # ... but no transaction wrote on two nodes: no two-phase commit anywhere.
    assert "two-phase" not in str(fanned.value)
    assert all(report.delta(node).two_phase_commits == 0 for node in report.after)
    assert set((await _balances(api)).values()) == {(150, 0, 0)}
    # Run again: nothing is due, nothing changes.
    assert await tasks.expire_holds(ctx) == 0
    assert await tasks.vest_points(ctx) == 0
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []
