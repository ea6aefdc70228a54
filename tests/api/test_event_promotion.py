"""Promotion is real time: the event whose earning lifts a member's facts promotes them in the
same request, and a retried event promotes (and pays a bonus) once."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api
from tests.api.test_events import event, order, rule, setup
from tests.api.test_tiers import published


async def _history(engine: AsyncEngine, api: Api, member: str) -> list[tuple[str, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT h.kind, h.from_tier, h.to_tier FROM member_tier_history h "
                "JOIN members m ON m.programme_id = h.programme_id AND m.id = h.member_id "
                "WHERE m.programme_id = :p AND m.external_id = :e ORDER BY h.id"
            ),
            {"p": api.programme.id, "e": member},
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_an_order_that_earns_enough_promotes_in_the_same_request(api: Api, engine: AsyncEngine) -> None:
    await setup(api)  # 1 point per 100 minor units, qualifying
    await published(api)  # silver from 1,000 qualifying points, gold from 5,000
    small = await event(api, order("m1", 50_000))  # 500 points: still bronze
    assert small["points"] == 500
    assert small["tier"] is None
    body = order("m1", 60_000)  # +600 = 1,100 qualifying points
    big = await event(api, body)
    assert big["facts"]["qualifying_points"] == 1100
    assert big["tier"]["kind"] == "promoted"
    assert (big["tier"]["from_tier"], big["tier"]["to_tier"]) == ("bronze", "silver")
    assert big["facts"]["tier"] == "silver"
    # The same event again: the stored answer, no second promotion.
    again = await api.post("/v1/events", body, role="ecommerce")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["tier"] == big["tier"]
    assert await _history(engine, api, "m1") == [("promoted", "bronze", "silver")]
    tier = (await api.get("/v1/members/m1/tier")).json()
    assert tier["tier"] == "silver"


async def test_simulate_shows_the_promotion_without_making_it(api: Api, engine: AsyncEngine) -> None:
    await setup(api)
    await published(api)
    answer = (
        await api.post("/v1/events/simulate", order("m1", 120_000), role="ecommerce", expect=200)
    ).json()
    assert answer["simulated"] is True
    assert answer["tier"]["to_tier"] == "silver"
    assert await _history(engine, api, "m1") == []
    assert (await api.get("/v1/members/m1/tier")).json()["tier"] == "bronze"


async def test_a_budget_that_gives_less_than_planned_counts_only_what_was_earned(
    api: Api, engine: AsyncEngine
) -> None:
    # The facts and the tier are worked out on the planned points first and redone when the
    # ledger gives less: 1,200 planned, only 900 left in the budget, silver needs 1,000.
    await api.budget("base", cap=900)
    await api.enrol("m1")
    await rule(api)
    await published(api)
    answer = await event(api, order("m1", 120_000))
    [outcome] = answer["rules"]
    assert (outcome["status"], outcome["points"], outcome["requested"]) == ("partial", 900, 1200)
    assert answer["points"] == 900 and answer["facts"]["qualifying_points"] == 900
    assert answer["tier"] is None and answer["facts"]["tier"] is None
    assert await _history(engine, api, "m1") == []
    assert (await api.balance("m1"))["available"] == 900


async def test_a_gold_members_multiplier_benefit_scales_what_an_event_earns(api: Api) -> None:
    # Gold includes a x1.5 multiplier benefit; reaching gold in one event, the next earns x1.5.
    from tests.api.test_benefits import benefit

    await setup(api)
    await published(api)
    first = await event(api, order("m1", 600_000))  # 6,000 points: gold from 5,000
    assert first["points"] == 6_000 and first["tier"]["to_tier"] == "gold"
    # Created after the event path cached the programme's configuration (no multipliers then).
    await benefit(api, "gold-x15", "multiplier", params={"factor": "1.5"})
    r = await api.client.put(
        "/v1/tier-benefits/gold", json={"benefits": [{"benefit": "gold-x15"}]}, headers=api.headers()
    )
    assert r.status_code == 200, r.text
    second = await event(api, order("m1", 10_000))  # 100 points, x1.5
    assert second["points"] == 150
    assert second["rules"][0]["requested"] == 150


async def test_every_path_of_an_event_stores_the_answer_it_gave(api: Api, engine: AsyncEngine) -> None:
    # An event is finished in one call when every budget pays what was planned and the tier
    # needs no more than its row; otherwise (a budget short, a refusal, a promotion) it is
    # finished after. Either way the replay is the first answer, transaction ids included.
    await api.budget("base", cap=1_600)
    await api.budget("tiny", cap=30)
    await api.enrol("m1")
    await rule(api)
    await rule(api, "bonus", budget="tiny", formula={"kind": "fixed", "points": 20}, qualifying=False)
    await published(api)  # silver from 1,000 qualifying points
    bodies = [
        order("m1", 50_000),  # planned in full: 500 + 20
        order("m1", 60_000),  # 600 + 10 of 20 (tiny is short): promoted to silver
        order("m1", 60_000),  # base has 500 of 600 left, tiny is exhausted
    ]
    answers = [await event(api, body) for body in bodies]
    assert [a["points"] for a in answers] == [520, 610, 500]
    assert answers[1]["tier"]["to_tier"] == "silver" and answers[2]["tier"] is None
    assert [r["status"] for r in answers[2]["rules"]] == ["partial", "not_earned"]
    for body, first in zip(bodies, answers, strict=True):
        assert all(r["transaction_id"] for r in first["rules"] if r["points"])
        again = await api.post("/v1/events", body, role="ecommerce")
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json() == first
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT points, outcome FROM member_events WHERE programme_id = :p ORDER BY id"),
                {"p": api.programme.id},
            )
        ).all()
        earned = (
            await conn.execute(
                text("SELECT sum(amount) FROM transactions WHERE programme_id = :p AND kind = 'earn'"),
                {"p": api.programme.id},
            )
        ).scalar_one()
    assert [(r.points, r.outcome["qualifying"]) for r in stored] == [(520, 500), (610, 600), (500, 500)]
    assert earned == 1_630
    facts = (await api.get("/v1/members/m1/facts")).json()["facts"]
    assert (facts["qualifying_points"], facts["lifetime_points"]) == (1_600, 1_630)
