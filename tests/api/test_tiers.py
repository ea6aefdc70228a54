"""Tiers through the API: ladder versions, backtest, publish, assess, pins, reads, isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, field_of, problem

SILVER_RULE = {"fact": "qualifying_points", "op": ">=", "value": 1000}
GOLD_RULE = {"fact": "qualifying_points", "op": ">=", "value": 5000}


def ladder(**gold: Any) -> dict[str, Any]:
    return {
        "note": "test ladder",
        "tiers": [
            {"code": "bronze", "name": "Bronze", "rank": 0},
            {
                "code": "silver",
                "rank": 1,
                "entry": SILVER_RULE,
                "retention": {"fact": "qualifying_points", "op": ">=", "value": 500},
                "validity": {"months": 12},
                "grace_days": 30,
            },
            {
                "code": "gold",
                "rank": 2,
                "entry": GOLD_RULE,
                "retention": {"fact": "qualifying_points", "op": ">=", "value": 3000},
                "validity": {"months": 12, "round_to": "month"},
                "downgrade_policy": "to_qualified",
                **gold,
            },
        ],
    }


async def set_facts(engine: AsyncEngine, api: Api, member: str, qualifying_points: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO member_facts (programme_id, member_id, qualifying_points) "
                "SELECT programme_id, id, :q FROM members WHERE programme_id = :p AND external_id = :e "
                "ON CONFLICT (programme_id, member_id) DO UPDATE SET qualifying_points = EXCLUDED.qualifying_points"
            ),
            {"p": api.programme.id, "e": member, "q": qualifying_points},
        )


async def published(api: Api, **gold: Any) -> int:
    version = (await api.post("/v1/tiers/versions", ladder(**gold))).json()["version"]
    await api.post(f"/v1/tiers/versions/{version}/publish", {}, expect=200)
    return int(version)


async def tier_rows(engine: AsyncEngine, api: Api) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text("SELECT count(*) FROM member_tiers WHERE programme_id = :p"), {"p": api.programme.id}
            )
            or 0
        )


async def test_version_lifecycle_backtest_and_publish(api: Api, engine: AsyncEngine) -> None:
    for member, points in (("a", 0), ("b", 1200), ("c", 7000), ("d", 100)):
        await api.enrol(member)
        await set_facts(engine, api, member, points)
    created = (await api.post("/v1/tiers/versions", ladder())).json()
    assert created["status"] == "draft" and created["version"] == 1
    assert created["qualification_window"]["kind"] == "rolling_months"
    assert [t["code"] for t in created["tiers"]] == ["bronze", "silver", "gold"]
    # The retention rule is spelled out even when omitted (then it is the entry rule).
    assert created["tiers"][0]["retention"] == {"all": []}

    backtest = (await api.post("/v1/tiers/versions/1/backtest", expect=200)).json()
    assert (backtest["members"], backtest["up"], backtest["down"], backtest["stay"]) == (4, 2, 0, 2)
    assert backtest["by_tier"] == {"bronze": 2, "silver": 1, "gold": 1}
    movers = {m["member_id"]: m for m in backtest["sample"]}
    assert movers["b"]["to_tier"] == "silver" and movers["b"]["facts"]["qualifying_points"] == 1200
    assert movers["c"]["to_tier"] == "gold" and movers["c"]["from_tier"] == "bronze"
    assert await tier_rows(engine, api) == 0  # a dry run writes nothing

    listed = (await api.get("/v1/tiers/versions")).json()["items"]
    assert [v["status"] for v in listed] == ["draft"]
    published_v = (await api.post("/v1/tiers/versions/1/publish", {}, expect=200)).json()
    assert published_v["status"] == "published" and published_v["effective_at"]
    problem(await api.post("/v1/tiers/versions/1/publish", {}, expect=None), 409, "tier_version_not_draft")

    await api.post("/v1/tiers/versions", ladder())
    await api.post("/v1/tiers/versions/2/publish", {}, expect=200)
    statuses = [v["status"] for v in (await api.get("/v1/tiers/versions")).json()["items"]]
    assert statuses == ["superseded", "published"]
    assert (await api.get("/v1/tiers/versions/2")).json()["status"] == "published"
    problem(await api.get("/v1/tiers/versions/9", expect=None), 404, "tier_version_not_found")


async def test_bad_rules_and_ladders_are_400_naming_the_path(api: Api) -> None:
    bad = ladder()
    bad["tiers"][2]["entry"] = {"all": [{"fact": "qualifying_points", "op": ">=", "value": "lots"}]}
    body = problem(await api.post("/v1/tiers/versions", bad, expect=None), 400)
    assert field_of(body).startswith("tiers[2].entry.all[0]")
    bad = ladder()
    bad["tiers"][1]["retention"] = {"fact": "no_such_fact", "op": "==", "value": 1}
    body = problem(await api.post("/v1/tiers/versions", bad, expect=None), 400)
    assert field_of(body).startswith("tiers[1].retention")
    no_base = ladder()
    no_base["tiers"] = no_base["tiers"][1:]
    problem(await api.post("/v1/tiers/versions", no_base, expect=None), 400)
    unknown = ladder()
    unknown["colour"] = "red"
    problem(await api.post("/v1/tiers/versions", unknown, expect=None), 400)
    problem(await api.post("/v1/tiers/versions", ladder(), role="marketing", expect=None), 403)


async def test_assess_promotes_in_real_time_with_bonus_event_and_history(
    api: Api, engine: AsyncEngine
) -> None:
    await api.budget("base")
    version = await published(api, bonus={"budget": "base", "points": 500})
    await api.enrol("m1")
    view = (await api.post("/v1/members/m1/tier/assess", expect=200)).json()
    assert view["tier"] == "bronze" and view["change"] is None
    assert view["progress"]["tier"] == "silver" and view["progress"]["met"] is False
    assert view["progress"]["explanation"]["gap"] == 1000
    assert await tier_rows(engine, api) == 0  # base members need no row

    await set_facts(engine, api, "m1", 6000)
    view = (await api.post("/v1/members/m1/tier/assess", expect=200)).json()
    assert view["tier"] == "gold" and view["change"]["kind"] == "promoted"
    assert view["change"]["from_tier"] == "bronze"
    assert view["next_tier"] is None and view["keep"]["met"] is True
    assert view["valid_until"] == view["next_assessment_at"]
    assert (await api.balance("m1"))["available"] == 500
    # A second assessment changes nothing and pays no second bonus.
    again = (await api.post("/v1/members/m1/tier/assess", expect=200)).json()
    assert again["change"] is None
    assert (await api.balance("m1"))["available"] == 500

    items = (await api.get("/v1/members/m1/tier/history")).json()["items"]
    assert len(items) == 1
    change = items[0]
    assert (change["kind"], change["reason"], change["to_tier"]) == ("promoted", "entry_rule_met", "gold")
    assert change["ladder_version"] == version
    rule = change["trace"]["rules"][0]
    assert (rule["tier"], rule["rule"], rule["met"]) == ("gold", "entry", True)
    assert rule["explanation"]["actual"] == 6000 and rule["explanation"]["value"] == 5000
    assert change["facts"]["qualifying_points"] == 6000
    assert change["trace"]["bonus"]["status"] == "posted"
    async with engine.connect() as conn:
        events = (
            await conn.execute(
                text(
                    "SELECT subject, payload FROM domain_events WHERE programme_id = :p AND type = 'tier.changed'"
                ),
                {"p": api.programme.id},
            )
        ).all()
    assert [(e.subject, e.payload["to_tier"]) for e in events] == [("member:m1", "gold")]


async def test_an_event_assessment_never_demotes(api: Api, engine: AsyncEngine) -> None:
    await published(api)
    await api.enrol("m1")
    await set_facts(engine, api, "m1", 1500)
    assert (await api.post("/v1/members/m1/tier/assess", expect=200)).json()["tier"] == "silver"
    await set_facts(engine, api, "m1", 0)
    view = (await api.post("/v1/members/m1/tier/assess", expect=200)).json()
    assert view["tier"] == "silver" and view["change"] is None
    assert view["keep"]["met"] is False and view["keep"]["explanation"]["gap"] == 500


async def test_pins_floor_and_fixed_are_audited_and_lifted(api: Api, engine: AsyncEngine) -> None:
    await published(api)
    await api.enrol("m1")
    until = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    problem(
        await api.post("/v1/members/m1/tier/pin", {"kind": "fixed", "tier": "gold"}, expect=None), 400
    )  # reason is mandatory
    problem(
        await api.post(
            "/v1/members/m1/tier/pin", {"kind": "fixed", "tier": "platinum", "reason": "x"}, expect=None
        ),
        400,
    )
    view = (
        await api.post(
            "/v1/members/m1/tier/pin",
            {"kind": "fixed", "tier": "gold", "until": until, "reason": "VIP complaint"},
            expect=200,
        )
    ).json()
    assert view["tier"] == "gold" and view["pin"]["kind"] == "fixed"
    assert view["change"]["kind"] == "pinned"
    assert view["valid_until"] == view["pin"]["until"] == view["next_assessment_at"]

    r = await api.client.request(
        "DELETE", "/v1/members/m1/tier/pin", json={"reason": "resolved"}, headers=api.headers()
    )
    assert r.status_code == 200, r.text
    assert r.json()["pin"] is None
    kinds = [(h["kind"], h["reason"]) for h in (await api.get("/v1/members/m1/tier/history")).json()["items"]]
    assert kinds == [("pin_removed", "resolved"), ("pinned", "pin_fixed"), ("pin_set", "VIP complaint")]

    # A floor pin lifts a bronze member to silver and keeps rules in charge above it.
    await api.enrol("m2")
    view = (
        await api.post(
            "/v1/members/m2/tier/pin", {"kind": "floor", "tier": "silver", "reason": "partner"}, expect=200
        )
    ).json()
    assert view["tier"] == "silver" and view["change"]["reason"] == "pin_floor"
    await set_facts(engine, api, "m2", 9000)
    view = (await api.post("/v1/members/m2/tier/assess", expect=200)).json()
    assert view["tier"] == "gold" and view["pin"]["tier"] == "silver"


async def test_me_tier_shows_only_the_members_own_compact_progress(api: Api, engine: AsyncEngine) -> None:
    await published(api)
    await api.enrol("me")
    await api.enrol("someone-else")
    await set_facts(engine, api, "me", 400)
    await set_facts(engine, api, "someone-else", 9000)
    await api.post("/v1/members/someone-else/tier/assess", expect=200)
    token = (await api.post("/v1/member-tokens", {"member_id": "me"}, role="crm")).json()["token"]
    r = await api.client.get("/v1/me/tier", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == "bronze" and body["next_tier"] == "silver"
    assert body["next_tier_gaps"] == [{"fact": "qualifying_points", "needed": 600}]
    assert body["keep_met"] is True
    # Staff keys may not use /v1/me, and a member token may not read staff routes.
    problem(await api.get("/v1/me/tier", expect=None), 403)
    r = await api.client.get("/v1/members/someone-else/tier", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403


async def test_programme_isolation(api: Api, other: Api, engine: AsyncEngine) -> None:
    await published(api)
    await api.enrol("m1")
    await set_facts(engine, api, "m1", 6000)
    await api.post("/v1/members/m1/tier/assess", expect=200)
    problem(await other.get("/v1/members/m1/tier", expect=None), 404)
    problem(await other.get("/v1/tiers/versions/1", expect=None), 404)
    assert (await other.get("/v1/tiers/versions")).json()["items"] == []
    await other.enrol("m1")
    problem(await other.post("/v1/members/m1/tier/assess", expect=None), 404, "no_tier_ladder")
    await published(other)
    assert (await other.get("/v1/members/m1/tier")).json()["tier"] == "bronze"
    assert (await api.get("/v1/members/m1/tier")).json()["tier"] == "gold"


async def test_a_version_published_for_later_takes_over_only_then(api: Api, engine: AsyncEngine) -> None:
    await published(api)
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    stricter = ladder()
    stricter["tiers"][1]["entry"] = {"fact": "qualifying_points", "op": ">=", "value": 2000}
    version = (await api.post("/v1/tiers/versions", stricter)).json()["version"]
    body = (
        await api.post(f"/v1/tiers/versions/{version}/publish", {"effective_at": later}, expect=200)
    ).json()
    assert body["status"] == "published"
    await api.enrol("m1")
    await set_facts(engine, api, "m1", 1500)
    # Version 1 still applies today: 1500 points are enough for silver.
    view = (await api.post("/v1/members/m1/tier/assess", expect=200)).json()
    assert (view["tier"], view["ladder_version"]) == ("silver", 1)
    earlier = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await api.post("/v1/tiers/versions", ladder())
    problem(await api.post("/v1/tiers/versions/3/publish", {"effective_at": earlier}, expect=None), 400)
