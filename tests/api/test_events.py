"""POST /v1/events: idempotency, earning rules (caps, pending, budgets), refunds, simulate,
bad input, isolation, backfill."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, Subscribe, field_of, problem


def order(member: str, amount: int, *, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    ref = fields.pop("order_ref", None) or f"o-{uuid.uuid4().hex[:8]}"
    return {
        "event_id": event_id or f"e-{uuid.uuid4().hex}",
        "member_id": member,
        "type": "order_completed",
        "order_ref": ref,
        "amount": amount,
        "currency": "CNY",
        **fields,
    }


async def rule(api: Api, code: str = "base-earn", **fields: Any) -> dict[str, Any]:
    body = {
        "code": code,
        "event_type": "order_completed",
        "formula": {"kind": "per_unit", "points": 1, "per": 100},
        "budget": "base",
        **fields,
    }
    return (await api.post("/v1/earning-rules", body)).json()


async def event(api: Api, body: dict[str, Any], *, role: str = "ecommerce", expect: int = 201) -> Any:
    r = await api.post("/v1/events", body, role=role, expect=expect)
    return r.json()


async def setup(api: Api, member: str = "m1", **rule_fields: Any) -> None:
    await api.budget("base", cap=1_000_000)
    await api.enrol(member)
    await rule(api, **rule_fields)


async def event_rows(engine: AsyncEngine, programme_id: int) -> dict[str, int]:
    tables = ("member_events", "member_activity_days", "member_facts", "transactions", "domain_events")
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t} WHERE programme_id = :p) AS {t}" for t in tables)
    async with engine.connect() as conn:
        return dict((await conn.execute(text(sql), {"p": programme_id})).one()._mapping)


async def test_order_earns_by_rule_and_updates_facts(
    api: Api, engine: AsyncEngine, subscribe: Subscribe
) -> None:
    await setup(api)
    await subscribe(["points.earned"])  # the ledger writes points events for subscribers
    result = await event(api, order("m1", 12_345, channel="web"))
    assert result["points"] == 123
    [fired] = result["rules"]
    assert fired["code"] == "base-earn" and fired["fired"] and fired["status"] == "earned"
    assert fired["condition"]["passed"] is True
    assert result["facts"]["orders"] == 1 and result["facts"]["spend"] == 12_345
    assert result["facts"]["qualifying_points"] == 123 and result["facts"]["lifetime_points"] == 123
    assert (await api.balance("m1"))["available"] == 123
    async with engine.connect() as conn:
        earned = (
            await conn.execute(
                text("SELECT payload FROM domain_events WHERE programme_id = :p AND type = 'points.earned'"),
                {"p": api.programme.id},
            )
        ).all()
    assert [r[0]["points"] for r in earned] == [123]
    facts = (await api.get("/v1/members/m1/facts")).json()
    assert facts["facts"]["orders"] == 1 and facts["last_order_at"] is not None
    assert facts["facts"]["lifecycle"] == "new"


async def test_replay_returns_the_stored_answer_and_other_body_is_409(api: Api, engine: AsyncEngine) -> None:
    await setup(api)
    body = order("m1", 1_000)
    r1 = await api.post("/v1/events", body, role="ecommerce")
    r2 = await api.post("/v1/events", body, role="ecommerce")
    assert r2.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in r1.headers
    assert r1.json() == r2.json()
    assert (await api.balance("m1"))["available"] == 10
    r3 = await api.post("/v1/events", {**body, "amount": 2_000}, role="ecommerce", expect=None)
    problem(r3, 409, "event_id_reused")
    assert (await api.balance("m1"))["available"] == 10


async def test_concurrent_duplicates_earn_once(api: Api, engine: AsyncEngine) -> None:
    await setup(api)
    body = order("m1", 5_000)
    answers = await asyncio.gather(*(api.post("/v1/events", body, role="ecommerce") for _ in range(6)))
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in answers).count("true") == 5
    assert (await api.balance("m1"))["available"] == 50
    async with engine.connect() as conn:
        n = (
            await conn.execute(
                text("SELECT count(*) FROM transactions WHERE programme_id = :p AND kind = 'earn'"),
                {"p": api.programme.id},
            )
        ).scalar_one()
    assert n == 1
    facts = (await api.get("/v1/members/m1/facts")).json()["facts"]
    assert facts["orders"] == 1


async def test_condition_trace_and_filters(api: Api) -> None:
    await setup(api)
    await rule(
        api,
        "big-spender",
        condition={"fact": "spend", "op": ">=", "value": 50_000},
        formula={"kind": "fixed", "points": 500},
        priority=200,
    )
    await rule(api, "app-only", event_filter={"channels": ["app"]}, formula={"kind": "fixed", "points": 7})
    result = await event(api, order("m1", 10_000, channel="web"))
    by_code = {r["code"]: r for r in result["rules"]}
    assert by_code["base-earn"]["points"] == 100
    assert not by_code["big-spender"]["fired"]
    trace = by_code["big-spender"]["condition"]
    assert trace["passed"] is False and trace["actual"] == 10_000 and trace["gap"] == 40_000
    assert "channel" in by_code["app-only"]["reason"]
    result = await event(api, order("m1", 40_000, channel="app"))
    by_code = {r["code"]: r for r in result["rules"]}
    # The condition sees the facts after this order: 50,000 spent.
    assert by_code["big-spender"]["points"] == 500 and by_code["app-only"]["points"] == 7
    assert result["points"] == 400 + 500 + 7


async def test_daily_cap_partial_then_nothing(api: Api) -> None:
    await setup(api, cap_per_day=150)
    first = await event(api, order("m1", 10_000))
    assert first["points"] == 100
    second = await event(api, order("m1", 10_000))
    assert second["points"] == 50 and second["rules"][0]["status"] == "partial"
    assert "cap" in second["rules"][0]["reason"] and second["rules"][0]["requested"] == 100
    third = await event(api, order("m1", 10_000))
    assert third["points"] == 0 and third["rules"][0]["status"] == "not_earned"
    assert (await api.balance("m1"))["available"] == 150
    # The cap counts the day the order happened.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    fourth = await event(api, order("m1", 10_000, occurred_at=yesterday))
    assert fourth["points"] == 100


async def test_pending_days_and_multiplier(api: Api) -> None:
    await setup(
        api,
        pending_days=14,
        formula={"kind": "per_unit", "points": 1, "per": 100, "multiplier": "1.5"},
        expiry={"days": 365},
    )
    result = await event(api, order("m1", 1_010))
    assert result["points"] == 15 and result["rules"][0]["status"] == "pending"
    balance = await api.balance("m1")
    assert balance["pending"] == 15 and balance["available"] == 0


async def test_budget_exhausted_rule_earns_nothing_event_still_recorded(
    api: Api, engine: AsyncEngine
) -> None:
    await api.budget("base", cap=1_000_000)
    await api.budget("tiny", cap=30)
    await api.enrol("m1")
    await rule(api)
    await rule(api, "bonus", budget="tiny", formula={"kind": "fixed", "points": 20})
    first = await event(api, order("m1", 1_000))
    assert {r["code"]: r["points"] for r in first["rules"]} == {"base-earn": 10, "bonus": 20}
    second = await event(api, order("m1", 1_000))
    bonus = {r["code"]: r for r in second["rules"]}["bonus"]
    assert bonus["points"] == 10 and bonus["status"] == "partial" and "budget" in bonus["reason"]
    third = await event(api, order("m1", 1_000))
    bonus = {r["code"]: r for r in third["rules"]}["bonus"]
    assert bonus["points"] == 0 and bonus["status"] == "not_earned"
    assert bonus["reason"].startswith("budget_exhausted")
    assert third["points"] == 10
    assert (await api.balance("m1"))["available"] == 30 + 30
    assert (await api.get("/v1/members/m1/facts")).json()["facts"]["orders"] == 3


async def test_refund_partial_then_full_claws_back_proportionally(api: Api) -> None:
    await setup(api)
    body = order("m1", 10_000, order_ref="A-1")
    await event(api, body)
    assert (await api.balance("m1"))["available"] == 100
    refund = {
        "event_id": "r1",
        "member_id": "m1",
        "type": "order_refunded",
        "order_ref": "A-1",
        "amount": 2_500,
    }
    r1 = await event(api, refund)
    assert r1["clawback"]["points"] == 25 and r1["points"] == -25
    assert r1["facts"]["spend"] == 7_500
    assert (await api.balance("m1"))["available"] == 75
    r2 = await event(api, {"event_id": "r2", "member_id": "m1", "type": "order_refunded", "order_ref": "A-1"})
    assert r2["clawback"]["points"] == 75
    assert r2["facts"]["spend"] == 0 and r2["facts"]["qualifying_points"] == 0
    assert (await api.balance("m1"))["available"] == 0
    # Nothing is left to refund.
    over = await api.post(
        "/v1/events",
        {"event_id": "r3", "member_id": "m1", "type": "order_refunded", "order_ref": "A-1", "amount": 1},
        role="ecommerce",
        expect=None,
    )
    assert field_of(problem(over, 400)) == "amount"


async def test_full_refund_claws_back_everything(api: Api) -> None:
    await setup(api)
    await rule(api, "flat", formula={"kind": "fixed", "points": 33})
    await event(api, order("m1", 999, order_ref="B-1"))
    assert (await api.balance("m1"))["available"] == 9 + 33
    r = await event(api, {"event_id": "rb", "member_id": "m1", "type": "order_refunded", "order_ref": "B-1"})
    assert r["clawback"]["points"] == 42
    assert (await api.balance("m1"))["available"] == 0


async def test_simulate_writes_nothing(api: Api, engine: AsyncEngine) -> None:
    await setup(api)
    before = await event_rows(engine, api.programme.id)
    r = await api.post("/v1/events/simulate", order("m1", 10_000), role="ecommerce", expect=200)
    assert r.json()["points"] == 100 and r.json()["simulated"] is True
    assert await event_rows(engine, api.programme.id) == before
    assert (await api.balance("m1"))["available"] == 0


BAD: list[tuple[dict[str, Any], str]] = [
    ({"type": "order_completed", "amount": 100, "currency": "CNY"}, "order_ref"),
    ({"type": "order_completed", "order_ref": "x", "currency": "CNY"}, "amount"),
    ({"type": "order_completed", "order_ref": "x", "amount": 100}, "currency"),
    ({"type": "order_completed", "order_ref": "x", "amount": -1, "currency": "CNY"}, "amount"),
    ({"type": "order_completed", "order_ref": "x", "amount": "100", "currency": "CNY"}, "amount"),
    ({"type": "order_completed", "order_ref": "x", "amount": 100, "currency": "cny"}, "currency"),
    (
        {"type": "order_completed", "order_ref": "x", "amount": 100, "currency": "CNY", "colour": "red"},
        "colour",
    ),
    (
        {
            "type": "order_completed",
            "order_ref": "x",
            "amount": 100,
            "currency": "CNY",
            "items": [{"sku": "a"}],
        },
        "items[0].price",
    ),
    ({"type": "teleport"}, "type"),
    ({"type": "Bad Type"}, "type"),
    ({"type": "signup", "amount": 5}, "amount"),
    ({"type": "signup", "occurred_at": "2999-01-01T00:00:00Z"}, "occurred_at"),
    ({"type": "signup", "occurred_at": "2020-01-01T00:00:00"}, "occurred_at"),
    ({"type": "order_refunded", "amount": 5}, "order_ref"),
    ({"type": "order_refunded", "order_ref": "x", "amount": 0}, "amount"),
    ({"type": "signup", "event_id": ""}, "event_id"),
]


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_bad_events_name_the_field_and_write_nothing(
    api: Api, engine: AsyncEngine, fields: dict[str, Any], field: str
) -> None:
    await setup(api)
    before = await event_rows(engine, api.programme.id)
    body = {"event_id": "bad-1", "member_id": "m1", **fields}
    r = await api.post("/v1/events", body, role="ecommerce", expect=None)
    assert field_of(problem(r, 400)) == field
    assert await event_rows(engine, api.programme.id) == before


async def test_unknown_member_and_role(api: Api, engine: AsyncEngine) -> None:
    await setup(api)
    before = await event_rows(engine, api.programme.id)
    r = await api.post("/v1/events", order("nobody", 100), role="ecommerce", expect=None)
    problem(r, 404, "member_not_found")
    r = await api.post("/v1/events", order("m1", 100), role="marketing", expect=None)
    problem(r, 403)
    assert await event_rows(engine, api.programme.id) == before


async def test_custom_event_types_from_settings(api: Api) -> None:
    await setup(api)
    body = {"event_id": "c1", "member_id": "m1", "type": "quiz_answered", "data": {"score": 3}}
    problem(await api.post("/v1/events", body, role="crm", expect=None), 400)
    settings = {"custom_event_types": ["quiz_answered"]}
    await api.client.put("/v1/activity/settings", json=settings, headers=api.headers())
    await rule(api, "quiz", event_type="quiz_answered", formula={"kind": "fixed", "points": 5})
    assert (await event(api, body, role="crm"))["points"] == 5


async def test_programme_isolation(api: Api, other: Api) -> None:
    await setup(api)
    await setup(other)
    body = order("m1", 10_000, event_id="shared-id")
    await event(api, body)
    # The same event id in another programme is another event.
    assert (await event(other, body))["points"] == 100
    r = await other.get("/v1/earning-rules/base-earn")
    assert r.json()["code"] == "base-earn"
    await other.patch("/v1/earning-rules/base-earn", {"formula": {"kind": "fixed", "points": 1}})
    assert (await event(api, order("m1", 10_000)))["points"] == 100
    assert len((await api.get("/v1/members/m1/events")).json()["items"]) == 2
    assert len((await other.get("/v1/members/m1/events")).json()["items"]) == 1
    problem(await other.get("/v1/members/m2/facts", expect=None), 404, "member_not_found")


async def test_events_pagination(api: Api) -> None:
    await setup(api)
    for i in range(5):
        await event(api, order("m1", 100 * (i + 1)))
    page = (await api.get("/v1/members/m1/events", params={"limit": 2})).json()
    seen = [e["event_id"] for e in page["items"]]
    while page["next_cursor"]:
        page = (
            await api.get("/v1/members/m1/events", params={"limit": 2, "cursor": page["next_cursor"]})
        ).json()
        seen += [e["event_id"] for e in page["items"]]
    assert len(seen) == len(set(seen)) == 5
    problem(await api.get("/v1/members/m1/events", params={"cursor": "junk"}, expect=None), 400)


async def test_tags(api: Api) -> None:
    await setup(api)
    r = await api.client.put("/v1/members/m1/tags", json={"add": ["vip", "b2b"]}, headers=api.headers("crm"))
    assert r.json()["tags"] == ["b2b", "vip"]
    r = await api.client.put("/v1/members/m1/tags", json={"remove": ["b2b"]}, headers=api.headers("crm"))
    assert r.json()["tags"] == ["vip"]
    await rule(
        api,
        "vip-bonus",
        condition={"fact": "tags", "op": "contains", "value": "vip"},
        formula={"kind": "fixed", "points": 9},
    )
    assert (await event(api, order("m1", 100)))["points"] == 1 + 9
    r = await api.client.put("/v1/members/m1/tags", json={"add": ["a"]}, headers=api.headers("ecommerce"))
    problem(r, 403)


async def test_import_rebuilds_facts_without_earning(api: Api) -> None:
    await setup(api)
    await api.enrol("m2")
    base = datetime.now(UTC) - timedelta(days=40)
    events = [
        order("m1", 1_000, occurred_at=(base + timedelta(days=i)).isoformat(), order_ref=f"h{i}")
        for i in range(10)
    ]
    events.append(order("m2", 5_000, occurred_at=base.isoformat(), order_ref="h-m2"))
    events.append(
        {
            "event_id": "h-ref",
            "member_id": "m1",
            "type": "order_refunded",
            "order_ref": "h0",
            "amount": 1_000,
            "occurred_at": base.isoformat(),
        }
    )
    result = (await api.post("/v1/events/import", {"events": events})).json()
    assert result["imported"] == 12 and result["points"] == 0 and result["members_refreshed"] == 2
    again = (await api.post("/v1/events/import", {"events": events})).json()
    assert again["imported"] == 0 and again["duplicates"] == 12
    facts = (await api.get("/v1/members/m1/facts")).json()
    assert facts["facts"]["lifetime_orders"] == 10 and facts["facts"]["lifetime_spend"] == 9_000
    assert facts["facts"]["recency_days"] == 31
    assert (await api.balance("m1"))["available"] == 0
    bad = await api.post(
        "/v1/events/import", {"events": [order("m1", 1, occurred_at="2999-01-01T00:00:00Z")]}, expect=None
    )
    assert field_of(problem(bad, 400)) == "events[0].occurred_at"


async def test_import_with_earn(api: Api) -> None:
    await setup(api)
    events = [order("m1", 1_000) for _ in range(3)]
    result = (await api.post("/v1/events/import", {"events": events, "earn": True})).json()
    assert result["imported"] == 3 and result["points"] == 30
    assert (await api.balance("m1"))["available"] == 30


async def test_concurrent_events_of_one_member_all_count(api: Api) -> None:
    await setup(api, cap_per_day=250)
    answers = await asyncio.gather(
        *(api.post("/v1/events", order("m1", 10_000), role="ecommerce") for _ in range(5))
    )
    assert sum(a.json()["points"] for a in answers) == 250  # the daily cap holds under concurrency
    facts = (await api.get("/v1/members/m1/facts")).json()["facts"]
    assert facts["orders"] == 5 and facts["spend"] == 50_000 and facts["lifetime_points"] == 250
    assert (await api.balance("m1"))["available"] == 250
