"""Upgrade benefits are effective: a member treated as tier T has what T includes, through the
checkout check, consumption, entitlements, the CRM profile and the marketing lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, problem
from tests.api.test_benefits import benefit, check, consume, set_tier
from tests.api.test_tiers import ladder, published


async def _include(api: Api, tier: str, items: list[dict[str, Any]]) -> None:
    r = await api.client.put(f"/v1/tier-benefits/{tier}", json={"benefits": items}, headers=api.headers())
    assert r.status_code == 200, r.text


async def _grant(api: Api, member: str, code: str, **fields: Any) -> int:
    body = {"benefit": code, "reason": "service recovery", **fields}
    return int((await api.post(f"/v1/members/{member}/benefit-grants", body, role="crm")).json()["id"])


async def _revoke(api: Api, member: str, grant_id: int) -> None:
    await api.post(
        f"/v1/members/{member}/benefit-grants/{grant_id}/revoke", {"reason": "ended"}, role="crm", expect=204
    )


def _by_code(entitlements: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["benefit"]: e for e in entitlements["items"]}


async def _catalogue(api: Api) -> None:
    """bronze (base) < silver < gold; lounge is gold's, returns silver's (3) and gold's (5)."""
    await published(api)
    await benefit(api, "lounge")
    await benefit(api, "returns", "quota", params={"limit": 1, "period": "month"})
    await benefit(api, "to-gold", "upgrade", params={"tier": "gold"})
    await _include(api, "silver", [{"benefit": "returns", "params": {"limit": 3}}])
    await _include(api, "gold", [{"benefit": "lounge"}, {"benefit": "returns", "params": {"limit": 5}}])


async def test_an_upgrade_grant_brings_the_tiers_benefits_until_it_is_revoked(
    api: Api, engine: AsyncEngine
) -> None:
    await _catalogue(api)
    await api.enrol("m1")
    await api.enrol("m2")
    await set_tier(engine, api, "m1", "silver")
    await set_tier(engine, api, "m2", "silver")
    assert (await check(api, "lounge", "m1"))["reason"] == "not_entitled"

    grant_id = await _grant(api, "m1", "to-gold")
    result = await check(api, "lounge", "m1")
    assert (result["allowed"], result["reason"]) == (True, "entitled")
    assert result["source"] == {
        "kind": "upgrade",
        "ref": "to-gold",
        "params": {},
        "tier": "gold",
        "via": {"kind": "grant", "ref": str(grant_id)},
    }
    assert (await check(api, "lounge", "m2"))["allowed"] is False  # m2 has no upgrade
    returns = await check(api, "returns", "m1")
    assert (returns["limit"], returns["source"]["kind"]) == (5, "upgrade")  # gold's 5 beats silver's 3

    items = _by_code((await api.get("/v1/members/m1/entitlements")).json())
    assert set(items) == {"lounge", "returns", "to-gold"}
    assert items["lounge"]["source"]["kind"] == "upgrade"
    assert (items["returns"]["limit"], items["returns"]["source"]["tier"]) == (5, "gold")
    assert sorted(x["kind"] for x in items["returns"]["sources"]) == ["tier", "upgrade"]
    profile = (await api.get("/v1/members/m1/profile", role="crm")).json()
    assert {e["benefit"] for e in profile["entitlements"]} == {"lounge", "returns", "to-gold"}
    token = (
        await api.client.post(
            "/v1/member-tokens",
            json={"member_id": "m1"},
            headers={"Authorization": api.headers("crm")["Authorization"]},
        )
    ).json()["token"]
    mine = await api.client.get("/v1/me/benefits", headers={"Authorization": f"Bearer {token}"})
    assert "lounge" in _by_code(mine.json())

    # Marketing: the upgraded member is listed and counted as such.
    listed = (await api.get("/v1/benefits/lounge/members", role="marketing")).json()["items"]
    assert listed == ["m1"]
    count = (await api.get("/v1/benefits/lounge/members/count", role="marketing")).json()
    assert (count["total"], count["by_upgrade"], count["by_tier"]) == (1, 1, 0)

    # Consumption goes through the upgrade too, with gold's limit.
    used = (await consume(api, "returns", "m1", "o1")).json()
    assert (used["limit"], used["remaining"]) == (5, 4)

    cache = api.client.app.state.benefit_catalogues
    reloads = cache.reloads
    await _revoke(api, "m1", grant_id)
    # The very next check sees the revocation (read live, no catalogue reload needed).
    assert (await check(api, "lounge", "m1"))["reason"] == "not_entitled"
    assert cache.reloads == reloads
    after = await check(api, "returns", "m1")
    assert (after["limit"], after["remaining"], after["source"]["kind"]) == (3, 2, "tier")
    assert "lounge" not in _by_code((await api.get("/v1/members/m1/entitlements")).json())
    assert (await api.get("/v1/benefits/lounge/members", role="marketing")).json()["items"] == []
    problem(await consume(api, "lounge", "m1", "o2", expect=409), 409, "benefit_not_available")


async def test_an_upgrade_adds_nothing_at_or_above_its_tier_and_does_not_chain(
    api: Api, engine: AsyncEngine
) -> None:
    await _catalogue(api)
    await benefit(api, "to-silver", "upgrade", params={"tier": "silver"})
    await benefit(api, "welcome", "flag")
    # Silver includes a welcome gift and an upgrade to gold for its members.
    await _include(
        api,
        "silver",
        [{"benefit": "returns", "params": {"limit": 3}}, {"benefit": "welcome"}, {"benefit": "to-gold"}],
    )
    for member, tier in (("bronze-up", "bronze"), ("gold-down", "gold"), ("silver", "silver")):
        await api.enrol(member)
        await set_tier(engine, api, member, tier)
    await _grant(api, "bronze-up", "to-silver")
    await _grant(api, "gold-down", "to-silver")

    # A bronze member treated as silver gets silver's benefits, but not silver's upgrade to gold
    # nor, through it, gold's lounge: upgrades do not chain.
    bronze = _by_code((await api.get("/v1/members/bronze-up/entitlements")).json())
    assert set(bronze) == {"returns", "welcome", "to-silver"}
    assert bronze["returns"]["limit"] == 3
    assert (await check(api, "welcome", "bronze-up"))["allowed"] is True
    assert (await check(api, "lounge", "bronze-up"))["reason"] == "not_entitled"
    assert (await check(api, "to-gold", "bronze-up"))["reason"] == "not_entitled"

    # A gold member with an upgrade to silver keeps gold's and gains nothing of silver's.
    gold = _by_code((await api.get("/v1/members/gold-down/entitlements")).json())
    assert set(gold) == {"lounge", "returns", "to-silver"}
    assert (gold["returns"]["limit"], gold["returns"]["source"]["kind"]) == (5, "tier")
    assert (await check(api, "welcome", "gold-down"))["reason"] == "not_entitled"

    # A silver member's own tier includes the upgrade to gold: the lounge comes through it.
    lounge = await check(api, "lounge", "silver")
    assert lounge["allowed"] is True
    assert lounge["source"]["via"] == {"kind": "tier", "ref": "silver"}
    count = (await api.get("/v1/benefits/lounge/members/count", role="marketing")).json()
    assert (count["by_tier"], count["by_upgrade"]) == (1, 1)
    assert (await api.get("/v1/benefits/lounge/members", role="marketing")).json()["items"] == [
        "gold-down",
        "silver",
    ]


async def test_an_upgrade_never_lowers_what_the_member_has(api: Api, engine: AsyncEngine) -> None:
    await _catalogue(api)
    # An unusual map: silver's quota is larger than gold's.
    await _include(api, "silver", [{"benefit": "returns", "params": {"limit": 8}}])
    await api.enrol("m1")
    await set_tier(engine, api, "m1", "silver")
    await _grant(api, "m1", "to-gold")
    result = await check(api, "returns", "m1")
    assert (result["limit"], result["source"]["kind"]) == (8, "tier")
    assert (await check(api, "lounge", "m1"))["allowed"] is True


async def test_an_upgrade_campaign_lifts_the_segment(api: Api) -> None:
    await _catalogue(api)
    await api.enrol("sh", attributes={"city": "sh"})
    await api.enrol("bj", attributes={"city": "bj"})
    await api.post(
        "/v1/segments", {"code": "sh", "rule": {"fact": "attributes.city", "op": "==", "value": "sh"}}
    )
    now = datetime.now(UTC)
    await api.post(
        "/v1/benefit-campaigns",
        {
            "code": "gold-week",
            "segment": "sh",
            "benefit": "to-gold",
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(days=7)).isoformat(),
        },
        role="marketing",
    )
    lounge = await check(api, "lounge", "sh")  # no tier row at all: the base tier
    assert lounge["allowed"] is True
    assert lounge["source"]["via"]["kind"] == "segment"
    assert lounge["source"]["via"]["ref"] == "gold-week"
    assert (await check(api, "lounge", "bj"))["allowed"] is False
    assert (await api.get("/v1/benefits/lounge/members", role="marketing")).json()["items"] == ["sh"]
    # Leaving the segment ends it at the next check.
    await api.patch("/v1/members/sh", {"attributes": {"city": "bj"}}, role="crm")
    assert (await check(api, "lounge", "sh"))["allowed"] is False


async def test_a_new_ladder_is_seen_by_the_next_check(api: Api) -> None:
    """The ranks come from the ladder in force, read in the check's statement: publishing a
    ladder without gold ends the upgrade at once, with no catalogue write in between."""
    await _catalogue(api)
    await api.enrol("m1")
    await _grant(api, "m1", "to-gold")
    assert (await check(api, "lounge", "m1"))["allowed"] is True
    tiers = [t for t in ladder()["tiers"] if t["code"] != "gold"]
    version = (await api.post("/v1/tiers/versions", {"note": "no gold", "tiers": tiers})).json()["version"]
    await api.post(f"/v1/tiers/versions/{version}/publish", {}, expect=200)
    assert (await check(api, "lounge", "m1"))["reason"] == "not_entitled"
    assert "lounge" not in _by_code((await api.get("/v1/members/m1/entitlements")).json())


async def test_the_upgrade_tier_must_be_on_the_published_ladder(api: Api, other: Api) -> None:
    await published(api)
    r = await api.post(
        "/v1/benefits",
        {
            "code": "to-x",
            "type": "upgrade",
            "names": {"en": "X", "zh-CN": "X"},
            "params": {"tier": "diamond"},
        },
        expect=400,
    )
    assert problem(r, 400)["field"] == "params.tier"
    await benefit(api, "to-gold", "upgrade", params={"tier": "gold"})
    await api.enrol("m1")
    r = await api.post(
        "/v1/members/m1/benefit-grants",
        {"benefit": "to-gold", "reason": "x", "params": {"tier": "diamond"}},
        role="crm",
        expect=400,
    )
    assert problem(r, 400)["field"] == "params.tier"
    r = await api.patch("/v1/benefits/to-gold", {"params": {"tier": "diamond"}}, expect=400)
    assert problem(r, 400)["field"] == "params.tier"
    r = await api.client.put(
        "/v1/tier-benefits/silver",
        json={"benefits": [{"benefit": "to-gold", "params": {"tier": "diamond"}}]},
        headers=api.headers(),
    )
    assert problem(r, 400)["field"] == "benefits[0].params.tier"
    await _grant(api, "m1", "to-gold", params={"tier": "silver"})
    # Without any published ladder there is nothing to check against: accepted.
    await benefit(other, "to-x", "upgrade", params={"tier": "diamond"})
