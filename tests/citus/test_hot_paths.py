"""The ledger's hot paths on the cluster: each one a single-shard transaction on its member's
node, and the ledger still verifies (docs/scaling.md, "How the schema is distributed")."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.ledger.verify import verify
from tests.api.helpers import Api
from tests.citus.routing import FannedOut, single_shard_only
from tests.support import make_programme


@pytest.fixture
async def api(client: AsyncTestClient[Any], engine: AsyncEngine) -> Api:
    return Api(client, await make_programme(engine))


async def _posting(
    api: Api, database_url: str, path: str, body: dict[str, Any] | None, key: str, status: int = 201
) -> Any:
    async with single_shard_only(database_url) as report:
        response = await api.post(path, body, role="ecommerce", key=key, expect=status)
    assert report.after, "the proof read no node"
    return response.json()


async def test_earn_spend_hold_capture_void_and_clawback_each_stay_on_one_shard(
    api: Api, database_url: str, engine: AsyncEngine
) -> None:
    await api.budget(cap=1_000_000)
    members = [f"m-{i}" for i in range(8)]
    for member in members:
        await api.enrol(member)
    for i, member in enumerate(members):
        earned = await _posting(
            api,
            database_url,
            "/v1/earn",
            {"member_id": member, "budget": "base", "points": 100, "reference": f"o-{i}"},
            f"earn-{i}",
        )
        assert earned["amount"] == 100
    # A retry is answered from the member's shard too, with the first answer.
    again = await _posting(
        api,
        database_url,
        "/v1/earn",
        {"member_id": members[0], "budget": "base", "points": 100, "reference": "o-0"},
        "earn-0",
    )
    assert again["amount"] == 100 and again["balance"]["available"] == 100
    for i, member in enumerate(members[:4]):
        spent = await _posting(
            api, database_url, "/v1/spend", {"member_id": member, "points": 30}, f"spend-{i}"
        )
        assert spent["balance"]["available"] == 70
        hold = await _posting(
            api, database_url, "/v1/holds", {"member_id": member, "points": 20}, f"hold-{i}"
        )
        captured = await _posting(
            api, database_url, f"/v1/holds/{hold['hold_id']}/capture", {"points": 15}, f"capture-{i}", 200
        )
        assert captured["status"] == "captured" and captured["balance"]["available"] == 55
        second = await _posting(
            api, database_url, "/v1/holds", {"member_id": member, "points": 10}, f"hold2-{i}"
        )
        voided = await _posting(
            api, database_url, f"/v1/holds/{second['hold_id']}/void", None, f"void-{i}", 200
        )
        assert voided["status"] == "voided" and voided["balance"]["available"] == 55
        clawed = await _posting(
            api,
            database_url,
            "/v1/clawbacks",
            {"member_id": member, "reference": f"o-{i}", "points": 40},
            f"claw-{i}",
        )
        assert clawed["clawed_back"] == 40 and clawed["balance"]["available"] == 15
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []


async def test_the_proof_fails_on_a_budget_top_up(api: Api, database_url: str) -> None:
    # The other side: a top-up writes every shard of the budget, on every node.
    await api.budget(cap=1000)
    with pytest.raises(FannedOut):
        async with single_shard_only(database_url):
            await api.post("/v1/budgets/base/top-up", {"points": 500}, expect=None)


async def test_an_earn_bigger_than_the_shard_beside_it_goes_through_the_coordinator(
    api: Api, database_url: str, engine: AsyncEngine
) -> None:
    # 3,200 points over 32 shards: 100 beside each member. 250 needs the others.
    await api.budget(cap=3200)
    await api.enrol("big")
    earned = await api.earn("big", 250, "base")
    assert earned["amount"] == 250
    budget = (await api.get("/v1/budgets/base")).json()
    assert budget["remaining"] == 2950
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []
