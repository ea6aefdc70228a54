"""Benefits through the API: catalogue, tier/segment/grant sources, the checkout check and its
cache invalidation, quota consumption (reserve/commit/release), outbox events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, problem

NAMES = {"en": "Free shipping", "zh-CN": "免运费"}


async def benefit(api: Api, code: str, type_: str = "flag", **fields: Any) -> dict[str, Any]:
    body = {"code": code, "type": type_, "names": NAMES, **fields}
    return (await api.post("/v1/benefits", body)).json()


async def set_tier(engine: AsyncEngine, api: Api, member: str, tier: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO member_tiers (programme_id, member_id, tier, ladder_version) "
                "SELECT programme_id, id, :t, 1 FROM members WHERE programme_id = :p AND external_id = :e "
                "ON CONFLICT (programme_id, member_id) DO UPDATE SET tier = EXCLUDED.tier"
            ),
            {"p": api.programme.id, "e": member, "t": tier},
        )


async def check(api: Api, code: str, member: str, **params: str) -> dict[str, Any]:
    r = await api.get(f"/v1/benefits/{code}/check", role="ecommerce", params={"member_id": member, **params})
    return dict(r.json())


async def consume(api: Api, code: str, member: str, order: str, expect: int | None = 201) -> Any:
    body = {"member_id": member, "order_reference": order}
    return await api.post(f"/v1/benefits/{code}/consume", body, role="ecommerce", expect=expect)


async def test_catalogue_needs_both_languages_and_valid_params(api: Api) -> None:
    r = await api.post("/v1/benefits", {"code": "x", "type": "flag", "names": {"en": "X"}}, expect=400)
    assert "zh-CN" in problem(r, 400)["detail"]
    r = await api.post(
        "/v1/benefits", {"code": "q", "type": "quota", "names": NAMES, "params": {"limit": 0}}, expect=400
    )
    assert problem(r, 400)["field"] == "params.limit"
    created = await benefit(api, "ship", descriptions={"en": "On every order", "zh-CN": "所有订单"})
    assert created["names"]["zh-CN"] == "免运费"
    problem(await api.post("/v1/benefits", {"code": "ship", "type": "flag", "names": NAMES}, expect=409), 409)
    assert [b["code"] for b in (await api.get("/v1/benefits")).json()["items"]] == ["ship"]


async def test_tier_benefit_follows_tier_changes_and_map_changes(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "lounge")
    await api.enrol("m1")
    assert (await check(api, "lounge", "m1"))["reason"] == "not_entitled"
    await api.client.put(
        "/v1/tier-benefits/gold", json={"benefits": [{"benefit": "lounge"}]}, headers=api.headers()
    )
    await set_tier(engine, api, "m1", "gold")
    result = await check(api, "lounge", "m1")
    assert result["allowed"] is True
    assert result["source"] == {"kind": "tier", "ref": "gold", "params": {}}
    # Tier change (demotion): the next check sees it, no stale cache.
    await set_tier(engine, api, "m1", "silver")
    assert (await check(api, "lounge", "m1"))["allowed"] is False
    # Tier map change: the catalogue version moves, the cache reloads.
    await set_tier(engine, api, "m1", "gold")
    assert (await check(api, "lounge", "m1"))["allowed"] is True
    r = await api.client.put("/v1/tier-benefits/gold", json={"benefits": []}, headers=api.headers())
    assert r.status_code == 200
    assert (await check(api, "lounge", "m1"))["allowed"] is False


async def test_grant_revoke_and_outbox(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "vip", channels=["app"])
    await api.enrol("m1")
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    g = (
        await api.post(
            "/v1/members/m1/benefit-grants",
            {"benefit": "vip", "reason": "complaint", "expires_at": expires},
            role="crm",
        )
    ).json()
    assert (await check(api, "vip", "m1", channel="app"))["allowed"] is True
    assert (await check(api, "vip", "m1", channel="web"))["reason"] == "channel_not_allowed"
    ent = (await api.get("/v1/members/m1/entitlements")).json()
    assert [(e["benefit"], e["source"]["kind"]) for e in ent["items"]] == [("vip", "grant")]
    await api.post(
        f"/v1/members/m1/benefit-grants/{g['id']}/revoke", {"reason": "error"}, role="crm", expect=204
    )
    assert (await check(api, "vip", "m1", channel="app"))["reason"] == "not_entitled"
    async with engine.connect() as conn:
        events = (
            await conn.execute(
                text("SELECT type, subject FROM domain_events WHERE programme_id = :p ORDER BY id"),
                {"p": api.programme.id},
            )
        ).all()
    assert ("benefit.granted", "member:m1") in [tuple(e) for e in events]


async def test_segment_campaign(api: Api) -> None:
    await benefit(api, "spring", "discount", params={"percent": 10, "cap": 5000})
    await api.enrol("a", attributes={"city": "sh"})
    await api.enrol("b", attributes={"city": "bj"})
    await api.post(
        "/v1/segments", {"code": "sh", "rule": {"fact": "attributes.city", "op": "==", "value": "sh"}}
    )
    now = datetime.now(UTC)
    await api.post(
        "/v1/benefit-campaigns",
        {
            "code": "spring-sh",
            "segment": "sh",
            "benefit": "spring",
            "starts_at": (now - timedelta(days=1)).isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
            "params": {"percent": 15, "cap": 5000},
        },
        role="marketing",
    )
    a = await check(api, "spring", "a")
    assert a["allowed"] is True
    assert a["params"] == {"percent": 15, "cap": 5000}
    assert (await check(api, "spring", "b"))["allowed"] is False
    assert (await api.get("/v1/benefits/spring/members", role="marketing")).json()["items"] == ["a"]
    assert (await api.get("/v1/benefits/spring/members/count", role="marketing")).json()["by_segment"] == 1


async def test_quota_consume_reserve_release_and_period_reset(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "returns", "quota", params={"limit": 2, "period": "month"})
    await api.enrol("m1")
    await api.post("/v1/members/m1/benefit-grants", {"benefit": "returns", "reason": "gold"}, role="crm")
    first = (await consume(api, "returns", "m1", "o1")).json()
    assert (first["state"], first["remaining"]) == ("committed", 1)
    again = (await consume(api, "returns", "m1", "o1")).json()
    assert again["replayed"] is True
    reserved = (
        await api.post(
            "/v1/benefits/returns/reserve", {"member_id": "m1", "order_reference": "o2"}, role="ecommerce"
        )
    ).json()
    assert (reserved["state"], reserved["remaining"]) == ("reserved", 0)
    assert (await check(api, "returns", "m1"))["reason"] == "quota_exhausted"
    problem(await consume(api, "returns", "m1", "o3", expect=409), 409, "quota_exhausted")
    await api.post("/v1/benefits/returns/consumptions/o2/release", {}, role="ecommerce", expect=200)
    assert (await check(api, "returns", "m1"))["remaining"] == 1
    await consume(api, "returns", "m1", "o3")
    # Cancellation of a committed use gives it back.
    await api.post("/v1/benefits/returns/consumptions/o1/release", {}, role="ecommerce", expect=200)
    ent = (await api.get("/v1/members/m1/entitlements")).json()["items"][0]
    assert (ent["limit"], ent["used"], ent["remaining"]) == (2, 1, 1)
    assert ent["resets_at"] is not None
    # A released reservation cannot be committed.
    problem(
        await api.post("/v1/benefits/returns/consumptions/o2/commit", {}, role="ecommerce", expect=409),
        409,
        "consumption_released",
    )
    # Period reset: last period's usage does not count in the new one.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE benefit_usage SET period_start = period_start - 31 WHERE programme_id = :p"),
            {"p": api.programme.id},
        )
    assert (await check(api, "returns", "m1"))["remaining"] == 2
    mine = await api.client.post(
        "/v1/member-tokens",
        json={"member_id": "m1"},
        headers={"Authorization": api.headers("crm")["Authorization"]},
    )
    token = mine.json()["token"]
    me = await api.client.get("/v1/me/benefits", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    assert me.json()["items"][0]["remaining"] == 2


async def test_reservations_time_out(api: Api, engine: AsyncEngine) -> None:
    from loyalty.benefits import service

    await benefit(api, "q1", "quota", params={"limit": 1, "period": "day"})
    await api.enrol("m1")
    await api.post("/v1/members/m1/benefit-grants", {"benefit": "q1", "reason": "test"}, role="crm")
    await api.post(
        "/v1/benefits/q1/reserve",
        {"member_id": "m1", "order_reference": "o1", "hold_seconds": 10},
        role="ecommerce",
    )
    assert (await check(api, "q1", "m1"))["allowed"] is False
    async with engine.begin() as conn:
        released = await service.release_expired(conn, datetime.now(UTC) + timedelta(seconds=11))
    assert released >= 1
    assert (await check(api, "q1", "m1"))["remaining"] == 1


async def test_birthday_gift_is_paid_once_per_period(api: Api, engine: AsyncEngine) -> None:
    from loyalty.benefits.tasks import pay_gifts

    now = datetime.now(UTC)
    await api.budget("gifts")
    await benefit(api, "bday", "gift", params={"points": 100, "budget": "gifts", "period": "year"})
    await api.client.put(
        "/v1/tier-benefits/gold", json={"benefits": [{"benefit": "bday"}]}, headers=api.headers()
    )
    await api.enrol("born-today", attributes={"birthday": now.strftime("%m-%d")})
    await api.enrol("born-later", attributes={"birthday": (now + timedelta(days=2)).strftime("%m-%d")})
    await api.enrol("no-tier", attributes={"birthday": now.strftime("%m-%d")})
    await set_tier(engine, api, "born-today", "gold")
    await set_tier(engine, api, "born-later", "gold")

    assert await pay_gifts(engine, now=now) >= 1
    await pay_gifts(engine, now=now)  # a second run pays nothing more

    assert (await api.balance("born-today"))["available"] == 100
    assert (await api.balance("born-later"))["available"] == 0
    assert (await api.balance("no-tier"))["available"] == 0


async def test_multiplier_for_takes_the_best_active_multiplier(api: Api, engine: AsyncEngine) -> None:
    from fractions import Fraction

    from loyalty.benefits.service import multiplier_for

    await benefit(api, "x15", "multiplier", params={"factor": "1.5"})
    await benefit(api, "x2", "multiplier", params={"factor": "2"})
    await api.client.put(
        "/v1/tier-benefits/gold", json={"benefits": [{"benefit": "x15"}]}, headers=api.headers()
    )
    member = await api.enrol("m1")
    await set_tier(engine, api, "m1", "gold")
    async with engine.connect() as conn:
        member_id = (
            await conn.execute(
                text("SELECT id FROM members WHERE programme_id = :p AND external_id = 'm1'"),
                {"p": api.programme.id},
            )
        ).scalar_one()
        assert await multiplier_for(conn, api.programme.id, member_id, datetime.now(UTC)) == Fraction(3, 2)
    grant = (
        await api.post("/v1/members/m1/benefit-grants", {"benefit": "x2", "reason": "promo"}, role="crm")
    ).json()
    async with engine.connect() as conn:
        assert await multiplier_for(conn, api.programme.id, member_id, datetime.now(UTC)) == 2
    await api.post(
        f"/v1/members/m1/benefit-grants/{grant['id']}/revoke", {"reason": "end"}, role="crm", expect=204
    )
    async with engine.connect() as conn:
        assert await multiplier_for(conn, api.programme.id, member_id, datetime.now(UTC)) == Fraction(3, 2)
    assert member


async def test_catalogue_cache_reloads_only_when_its_version_moves(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "ship")
    await api.client.put(
        "/v1/tier-benefits/gold", json={"benefits": [{"benefit": "ship"}]}, headers=api.headers()
    )
    await api.enrol("m1")
    await set_tier(engine, api, "m1", "gold")
    assert (await check(api, "ship", "m1"))["allowed"] is True
    cache = api.client.app.state.benefit_catalogues
    before = cache.reloads
    for _ in range(5):
        assert (await check(api, "ship", "m1"))["allowed"] is True
    assert cache.reloads == before  # steady state: one statement per check, no reload
    await api.patch("/v1/benefits/ship", {"active": False})
    assert (await check(api, "ship", "m1"))["reason"] == "benefit_inactive"
    assert cache.reloads == before + 1


async def test_crm_profile_joins_points_tier_and_entitlements(api: Api, engine: AsyncEngine) -> None:
    await api.budget()
    await benefit(api, "ship")
    await api.client.put(
        "/v1/tier-benefits/gold", json={"benefits": [{"benefit": "ship"}]}, headers=api.headers()
    )
    await api.member_with("m1", 250)
    await set_tier(engine, api, "m1", "gold")
    profile = (await api.get("/v1/members/m1/profile", role="crm")).json()
    assert profile["member"]["member_id"] == "m1"
    assert profile["balance"]["available"] == 250
    assert profile["tier"] == "gold"
    assert [e["benefit"] for e in profile["entitlements"]] == ["ship"]
    problem(await api.get("/v1/members/nobody/profile", role="crm", expect=404), 404, "member_not_found")
