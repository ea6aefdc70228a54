"""The checkout's benefit paths on the cluster: the check, a consume and a reserve (and a commit
or release that names its member) each run on the member's shard alone (docs/scaling.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.benefits import repository
from loyalty.db import plain_url
from tests.api.helpers import Api
from tests.api.test_benefits import benefit, check, consume, set_tier
from tests.citus.routing import FannedOut, single_shard_only
from tests.support import make_programme

MEMBERS = [f"m-{i}" for i in range(6)]


@pytest.fixture
async def api(client: AsyncTestClient[Any], engine: AsyncEngine) -> Api:
    api = Api(client, await make_programme(engine))
    await benefit(api, "returns", "quota", params={"limit": 3, "period": "month"})
    await benefit(api, "lounge")
    r = await api.client.put(
        "/v1/tier-benefits/gold",
        json={"benefits": [{"benefit": "returns", "params": {"limit": 4}}, {"benefit": "lounge"}]},
        headers=api.headers(),
    )
    assert r.status_code == 200, r.text
    for member in MEMBERS:
        await api.enrol(member)
        await set_tier(engine, api, member, "gold")
    # The API key and the checkout's catalogue are cached before the proofs.
    await check(api, "returns", MEMBERS[0])
    return api


async def test_check_consume_reserve_commit_and_release_each_stay_on_one_shard(
    api: Api, database_url: str
) -> None:
    for i, member in enumerate(MEMBERS):
        async with single_shard_only(database_url) as report:
            checked = await check(api, "returns", member)
        assert report.single_shard_executions > 0
        assert checked["allowed"] and checked["remaining"] == 4, checked
        async with single_shard_only(database_url):
            used = (await consume(api, "returns", member, f"o-{i}")).json()
        assert used["state"] == "committed" and used["remaining"] == 3
        async with single_shard_only(database_url):
            again = (await consume(api, "returns", member, f"o-{i}")).json()
        assert again["replayed"]
        async with single_shard_only(database_url):
            held = await api.post(
                "/v1/benefits/returns/reserve",
                {"member_id": member, "order_reference": f"r-{i}", "hold_seconds": 600},
                role="ecommerce",
            )
        assert held.json()["state"] == "reserved" and held.json()["remaining"] == 2
        async with single_shard_only(database_url):
            flag = (await consume(api, "lounge", member, f"l-{i}")).json()
        assert flag["state"] == "committed"
        settle = "commit" if i % 2 else "release"
        async with single_shard_only(database_url):
            settled = await api.post(
                f"/v1/benefits/returns/consumptions/r-{i}/{settle}?member_id={member}",
                None,
                role="ecommerce",
                expect=200,
            )
        assert settled.json()["state"] == ("committed" if i % 2 else "released")
        async with single_shard_only(database_url):
            after = await check(api, "returns", member)
        assert after["remaining"] == (2 if i % 2 else 3), after


async def test_without_the_member_key_the_check_fans_out_or_is_refused(api: Api, database_url: str) -> None:
    # The other side: without the key, the member is found by external id on every shard...
    conn = await asyncpg.connect(plain_url(database_url))
    try:
        with pytest.raises(FannedOut):
            async with single_shard_only(database_url):
                found = await conn.fetchval(
                    "SELECT id FROM members WHERE programme_id = $1 AND external_id = $2",
                    api.programme.id,
                    MEMBERS[1],
                )
        assert found is not None
        # ... and the single-node statement, which joins the member's rows through it, is refused.
        benefit_id = await conn.fetchval(
            "SELECT id FROM benefits WHERE programme_id = $1 AND code = 'returns'", api.programme.id
        )
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            await conn.fetchrow(
                repository.CHECK_SQL,
                api.programme.id,
                MEMBERS[1],
                benefit_id,
                datetime.now(UTC),
                None,
                [],
                [],
            )
    finally:
        await conn.close()


async def test_the_proof_fails_on_a_commit_that_does_not_name_its_member(api: Api, database_url: str) -> None:
    await api.post(
        "/v1/benefits/returns/reserve",
        {"member_id": MEMBERS[2], "order_reference": "unnamed", "hold_seconds": 600},
        role="ecommerce",
    )
    with pytest.raises(FannedOut):
        async with single_shard_only(database_url):
            done = await api.post(
                "/v1/benefits/returns/consumptions/unnamed/commit", None, role="ecommerce", expect=200
            )
    # It still works, through every shard.
    assert done.json()["state"] == "committed" and done.json()["member_id"] == MEMBERS[2]


@pytest.mark.xfail(
    strict=True,
    reason="a member_tiers write routed from the coordinator fires the grant trigger on the shard, "
    "where Citus refuses its INSERT into the (distributed) outbox: a nested distributed query",
)
async def test_a_tier_change_grants_what_the_new_tier_adds(api: Api, engine: AsyncEngine) -> None:
    # The row triggers of member_tiers (the statement triggers' Citus form), on the member's shard.
    await benefit(api, "priority")
    r = await api.client.put(
        "/v1/tier-benefits/silver", json={"benefits": [{"benefit": "lounge"}]}, headers=api.headers()
    )
    assert r.status_code == 200, r.text
    r = await api.client.put(
        "/v1/tier-benefits/platinum",
        json={"benefits": [{"benefit": "lounge"}, {"benefit": "priority"}]},
        headers=api.headers(),
    )
    assert r.status_code == 200, r.text
    await api.enrol("fresh")
    endpoint = (
        await api.post(
            "/v1/webhooks/endpoints", {"url": "https://crm.example/hooks", "event_types": ["benefit.granted"]}
        )
    ).json()["id"]
    try:
        async with engine.begin() as conn:
            # The events alone are looked at here, without their deliveries.
            await conn.execute(
                text("ALTER TABLE domain_events DISABLE TRIGGER domain_events_webhook_fan_out")
            )
        async with engine.begin() as conn:  # an insert, above the base tier
            await conn.execute(
                text(
                    "INSERT INTO member_tiers (programme_id, member_id, tier, rank, ladder_version) "
                    "SELECT programme_id, id, 'silver', 1, 1 FROM members "
                    "WHERE programme_id = :p AND external_id = 'fresh'"
                ),
                {"p": api.programme.id},
            )
        await set_tier(engine, api, MEMBERS[0], "platinum")  # an update: gold -> platinum
        await set_tier(engine, api, MEMBERS[1], "gold")  # no change
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT subject, payload FROM domain_events "
                        "WHERE programme_id = :p AND type = 'benefit.granted' ORDER BY id"
                    ),
                    {"p": api.programme.id},
                )
            ).all()
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE domain_events ENABLE TRIGGER domain_events_webhook_fan_out"))
        r = await api.client.delete(f"/v1/webhooks/endpoints/{endpoint}", headers=api.headers())
        assert r.status_code == 204, r.text
    assert [(subject, p["benefit"], p["source"]) for subject, p in rows] == [
        ("member:fresh", "lounge", {"kind": "tier", "ref": "silver"}),
        (f"member:{MEMBERS[0]}", "priority", {"kind": "tier", "ref": "platinum"}),  # lounge carried over
    ]
