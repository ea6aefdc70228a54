"""Two answers to one question agree: what the customer's app sees under /v1/me and what the
brand's staff see under /v1/members for the same member — the tier of a new member, and the
instant a quota resets (local midnight in the programme's time zone, given in UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api
from tests.api.test_benefits import benefit, check
from tests.support import make_programme

TZ = "Asia/Shanghai"


async def _shanghai(client: AsyncTestClient[Any], engine: AsyncEngine) -> Api:
    return Api(client, await make_programme(engine, timezone=TZ))


async def _member_headers(api: Api, member: str) -> dict[str, str]:
    r = await api.post("/v1/member-tokens", {"member_id": member}, role="crm", expect=None)
    assert r.status_code in (200, 201), r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _publish(api: Api) -> None:
    definition = {
        "tiers": [
            {"code": "member", "rank": 0},
            {"code": "silver", "rank": 1, "entry": {"fact": "qualifying_points", "op": ">=", "value": 1000}},
        ]
    }
    version = (await api.post("/v1/tiers/versions", definition)).json()["version"]
    await api.post(f"/v1/tiers/versions/{version}/publish", {}, expect=200)


def _next_local_month(now: datetime) -> datetime:
    local = now.astimezone(ZoneInfo(TZ)).date().replace(day=1)
    following = (local + timedelta(days=32)).replace(day=1)
    return datetime.combine(following, time(), ZoneInfo(TZ)).astimezone(UTC)


async def test_a_new_member_is_on_the_base_tier_everywhere(
    client: AsyncTestClient[Any], engine: AsyncEngine
) -> None:
    api = await _shanghai(client, engine)
    await _publish(api)
    await benefit(api, "returns", "quota", params={"limit": 3, "period": "month"})
    r = await api.client.put(
        "/v1/tier-benefits/member", json={"benefits": [{"benefit": "returns"}]}, headers=api.headers()
    )
    assert r.status_code == 200, r.text
    await api.enrol("m1")  # no tier row yet
    me = await _member_headers(api, "m1")

    my_tier = await api.client.get("/v1/me/tier", headers=me)
    mine = await api.client.get("/v1/me/benefits", headers=me)
    assert my_tier.status_code == mine.status_code == 200, (my_tier.text, mine.text)
    staff = (await api.get("/v1/members/m1/entitlements")).json()
    profile = (await api.get("/v1/members/m1/profile", role="crm")).json()
    tier_view = (await api.get("/v1/members/m1/tier")).json()
    assert my_tier.json()["tier"] == mine.json()["tier"] == staff["tier"] == profile["tier"] == "member"
    assert tier_view["tier"] == "member"
    # And the base tier's benefits are the member's: in every view and at checkout.
    assert [e["benefit"] for e in mine.json()["items"]] == ["returns"]
    assert [e["benefit"] for e in staff["items"]] == ["returns"]
    assert (await check(api, "returns", "m1"))["allowed"] is True


async def test_a_quota_resets_at_the_same_instant_in_every_view(
    client: AsyncTestClient[Any], engine: AsyncEngine
) -> None:
    api = await _shanghai(client, engine)
    await benefit(api, "returns", "quota", params={"limit": 3, "period": "month"})
    await api.enrol("m1")
    await api.post("/v1/members/m1/benefit-grants", {"benefit": "returns", "reason": "test"}, role="crm")
    me = await _member_headers(api, "m1")
    now = datetime.now(UTC)
    [mine] = (await api.client.get("/v1/me/benefits", headers=me)).json()["items"]
    [staff] = (await api.get("/v1/members/m1/entitlements")).json()["items"]
    checked = await check(api, "returns", "m1")
    # The one datetime format of the API: UTC, with a Z.
    assert mine["resets_at"] == staff["resets_at"] == checked["resets_at"]
    assert mine["resets_at"].endswith("Z")
    assert datetime.fromisoformat(mine["resets_at"]) == _next_local_month(now)
    # Usage is counted in the same (local) period whoever reads it.
    await api.post(
        "/v1/benefits/returns/consume", {"member_id": "m1", "order_reference": "o1"}, role="ecommerce"
    )
    [mine] = (await api.client.get("/v1/me/benefits", headers=me)).json()["items"]
    [staff] = (await api.get("/v1/members/m1/entitlements")).json()["items"]
    assert mine["remaining"] == staff["remaining"] == 2
