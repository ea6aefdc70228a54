"""benefit.granted goes out when a member's tier starts giving them a benefit, and when a
segment campaign starts (the worker's announce job)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.benefits.tasks import announce_campaigns
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


# Campaigns -----------------------------------------------------------------------------------


async def _campaign(
    api: Api, code: str, benefit_code: str, starts: datetime, ends: datetime, **fields: Any
) -> None:
    body = {
        "code": code,
        "segment": "sh",
        "benefit": benefit_code,
        "starts_at": starts.isoformat(),
        "ends_at": ends.isoformat(),
        **fields,
    }
    await api.post("/v1/benefit-campaigns", body, role="marketing")


async def _sh_members(api: Api) -> None:
    await api.post(
        "/v1/segments", {"code": "sh", "rule": {"fact": "attributes.city", "op": "==", "value": "sh"}}
    )
    await api.enrol("a", attributes={"city": "sh"})
    await api.enrol("b", attributes={"city": "bj"})
    await api.enrol("c", attributes={"city": "sh"})
    await api.enrol("d", attributes={"city": "sh"})
    await api.patch("/v1/members/d", {"status": "suspended"}, role="crm")


async def _announced(api: Api) -> dict[str, str | None]:
    items = (await api.get("/v1/benefit-campaigns", role="marketing")).json()["items"]
    return {c["code"]: c.get("announced_at") for c in items}


async def test_a_started_campaign_is_announced_once_to_its_segment(
    api: Api, engine: AsyncEngine, subscribe: Subscribe
) -> None:
    await subscribe(["benefit.granted"])
    await _sh_members(api)
    await benefit(api, "spring", "discount", params={"percent": 10})
    await benefit(api, "paused", "flag")
    await api.patch("/v1/benefits/paused", {"active": False})
    now = datetime.now(UTC)
    await _campaign(
        api, "running", "spring", now - timedelta(hours=1), now + timedelta(days=7), params={"percent": 15}
    )
    await _campaign(api, "later", "spring", now + timedelta(hours=1), now + timedelta(days=7))
    await _campaign(api, "over", "spring", now - timedelta(days=7), now - timedelta(days=1))
    await _campaign(api, "waiting", "paused", now - timedelta(hours=1), now + timedelta(days=7))

    await announce_campaigns(engine, now=now)
    granted = await _granted(engine, api.programme.id)
    # Active members of the segment only (d is suspended, b elsewhere); the ended campaign is
    # marked without events, the one whose benefit is inactive waits.
    assert [(subject, p["source"]) for subject, p in granted] == [
        ("member:a", {"kind": "segment", "ref": "running"}),
        ("member:c", {"kind": "segment", "ref": "running"}),
    ]
    assert granted[0][1] == {
        "member_id": "a",
        "benefit": "spring",
        "source": {"kind": "segment", "ref": "running"},
        "params": {"percent": 15},
        "expires_at": (now + timedelta(days=7)).isoformat(),
    }
    announced = await _announced(api)
    assert announced["running"] is not None and announced["over"] is not None
    assert announced["later"] is None and announced["waiting"] is None

    # A second run, and two concurrent runs, announce nothing again.
    await announce_campaigns(engine, now=now)
    await asyncio.gather(announce_campaigns(engine, now=now), announce_campaigns(engine, now=now))
    assert len(await _granted(engine, api.programme.id)) == 2

    # The later campaign is announced once it has started; the paused one once it is active.
    await api.patch("/v1/benefits/paused", {"active": True})
    await asyncio.gather(
        announce_campaigns(engine, now=now + timedelta(hours=2)),
        announce_campaigns(engine, now=now + timedelta(hours=2)),
    )
    refs = [(subject, p["source"]["ref"]) for subject, p in await _granted(engine, api.programme.id)]
    assert sorted(refs[2:]) == [
        ("member:a", "later"),
        ("member:a", "waiting"),
        ("member:c", "later"),
        ("member:c", "waiting"),
    ]
    assert None not in (await _announced(api)).values()


async def test_a_campaign_without_subscribers_is_marked_without_events(api: Api, engine: AsyncEngine) -> None:
    await _sh_members(api)
    await benefit(api, "spring", "flag")
    now = datetime.now(UTC)
    await _campaign(api, "running", "spring", now - timedelta(minutes=1), now + timedelta(days=1))
    await announce_campaigns(engine, now=now)
    assert await _granted(engine, api.programme.id) == []
    assert (await _announced(api))["running"] is not None
