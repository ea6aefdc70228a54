"""benefit.granted goes out when a member's tier starts giving them a benefit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, Subscribe
from tests.api.test_benefits import benefit
from tests.api.test_tiers import published, set_facts


async def _granted(engine: AsyncEngine, programme_id: int) -> list[tuple[str, dict[str, Any]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT subject, payload FROM domain_events "
                "WHERE programme_id = :p AND type = 'benefit.granted' ORDER BY id"
            ),
            {"p": programme_id},
        )
        return [(r.subject, r.payload) for r in rows]


async def _include(api: Api, tier: str, codes: list[str]) -> None:
    body = {"benefits": [{"benefit": code} for code in codes]}
    r = await api.client.put(f"/v1/tier-benefits/{tier}", json=body, headers=api.headers())
    assert r.status_code == 200, r.text


async def test_promotions_grant_what_the_new_tier_adds(
    api: Api, engine: AsyncEngine, subscribe: Subscribe
) -> None:
    await subscribe(["benefit.granted"])
    await published(api)  # bronze (base), silver from 1,000 qualifying points, gold from 5,000
    await benefit(api, "free-delivery", "quota", params={"limit": 3, "period": "month"})
    await benefit(api, "priority", "flag")
    await _include(api, "silver", ["free-delivery"])
    await _include(api, "gold", ["free-delivery", "priority"])
    await api.enrol("m1")
    await api.enrol("m2")

    await set_facts(engine, api, "m1", 1_500)
    assert (await api.post("/v1/members/m1/tier/assess", expect=200)).json()["tier"] == "silver"
    await set_facts(engine, api, "m1", 6_000)
    assert (await api.post("/v1/members/m1/tier/assess", expect=200)).json()["tier"] == "gold"
    # A member assessed on the base tier gets nothing.
    assert (await api.post("/v1/members/m2/tier/assess", expect=200)).json()["tier"] == "bronze"

    granted = await _granted(engine, api.programme.id)
    assert [(subject, p["benefit"], p["source"]) for subject, p in granted] == [
        ("member:m1", "free-delivery", {"kind": "tier", "ref": "silver"}),
        ("member:m1", "priority", {"kind": "tier", "ref": "gold"}),  # free delivery carried over
    ]
    assert granted[0][1]["params"] == {"limit": 3, "period": "month"}


async def test_nothing_is_written_without_a_subscriber(api: Api, engine: AsyncEngine) -> None:
    await published(api)
    await benefit(api, "priority", "flag")
    await _include(api, "silver", ["priority"])
    await api.enrol("m1")
    await set_facts(engine, api, "m1", 1_500)
    assert (await api.post("/v1/members/m1/tier/assess", expect=200)).json()["tier"] == "silver"
    assert await _granted(engine, api.programme.id) == []
