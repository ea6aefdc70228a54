"""Replay of a draft earning-rule set over past events: hand-checked figures, agreement with the
live path on a second programme running the draft for real, validation, roles, job progress,
and nothing written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.activity import replay, replay_tasks
from loyalty.ledger.verify import verify
from tests.api.helpers import Api, field_of, problem

WHEN = datetime.now(UTC) - timedelta(days=2)
SPEND = {
    "code": "spend",
    "event_type": "order_completed",
    "formula": {"kind": "per_unit", "points": 1, "per": 100},
    "budget": "base",
}
SIGNUP = {
    "code": "signup-bonus",
    "event_type": "signup",
    "formula": {"kind": "fixed", "points": 50},
    "budget": "base",
}
SHOES = {
    "code": "shoes-double",
    "event_type": "order_completed",
    "event_filter": {"categories": ["shoes"]},
    "formula": {"kind": "per_unit", "points": 1, "per": 100},
    "budget": "base",
}
VIP = {
    "code": "vip-bonus",
    "event_type": "order_completed",
    "condition": {"fact": "tags", "op": "contains", "value": "vip"},
    "formula": {"kind": "fixed", "points": 7},
    "cap_per_day": 10,
    "budget": "base",
}


def order(event_id: str, member: str, amount: int, category: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "member_id": member,
        "type": "order_completed",
        "order_ref": f"o-{event_id}",
        "amount": amount,
        "currency": "CNY",
        "items": [{"sku": "s1", "category": category, "price": amount}],
        "occurred_at": at.isoformat(),
    }


async def seed(api: Api, rules: list[dict[str, Any]]) -> None:
    await api.budget("base", cap=10_000_000)
    for rule in rules:
        await api.post("/v1/earning-rules", rule)
    await api.enrol("m1")
    await api.enrol("m2")
    await api.client.put("/v1/members/m1/tags", json={"add": ["vip"]}, headers=api.headers("crm"))
    events = [
        order("e1", "m1", 1000, "shoes", WHEN),
        order("e2", "m2", 500, "food", WHEN),
        {"event_id": "e3", "member_id": "m2", "type": "signup", "occurred_at": WHEN.isoformat()},
        order("e4", "m1", 300, "food", WHEN + timedelta(minutes=5)),
        order("e5", "m1", 200, "shoes", WHEN + timedelta(days=1)),
    ]
    for event in events:
        await api.post("/v1/events", event, role="ecommerce", expect=201)


def body(rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "rules": rules,
        "since": (WHEN - timedelta(days=1)).isoformat(),
        "until": (WHEN + timedelta(days=3)).isoformat(),
        **extra,
    }


async def run(api: Api, engine: AsyncEngine, req: dict[str, Any]) -> dict[str, Any]:
    queued = await api.post("/v1/earning-rules/replay", req, expect=202)
    job_id = queued.json()["job_id"]
    assert queued.headers["location"] == f"/v1/earning-rules/replay/{job_id}"
    before = (await api.get(f"/v1/earning-rules/replay/{job_id}")).json()
    assert before["status"] == "queued" and before["percent"] == 0 and before["result"] is None
    principal = {"programme_id": api.programme.id, "programme_code": api.programme.code, "role": "operator"}
    await replay_tasks.replay_earning_rules({"engine": engine, "job_id": job_id}, principal, req)
    after = (await api.get(f"/v1/earning-rules/replay/{job_id}")).json()
    assert after["status"] == "succeeded" and after["percent"] == 100
    result: dict[str, Any] = after["result"]
    return result


async def test_double_a_category_add_a_rule_remove_a_rule(api: Api, engine: AsyncEngine) -> None:
    await seed(api, [SPEND, SIGNUP])
    # Actual: m1 10 + 3 + 2 = 15, m2 5 + 50 = 55. Draft: spend as is, shoes doubled, no signup.
    result = await run(api, engine, body([SPEND, SHOES]))
    assert (result["actual_points"], result["draft_points"], result["delta_points"]) == (70, 32, -38)
    assert (result["actual_micros"], result["draft_micros"]) == (700_000, 320_000)
    rules = {r["code"]: r for r in result["rules"]}
    assert (rules["spend"]["draft_points"], rules["spend"]["actual_points"]) == (20, 20)
    assert (rules["shoes-double"]["draft_points"], rules["shoes-double"]["events"]) == (12, 2)
    assert rules["signup-bonus"] == {
        "code": "signup-bonus", "in_draft": False, "events": 0, "draft_points": 0, "actual_points": 50,
        "draft_micros": 0, "actual_micros": 500_000,
    }  # fmt: skip
    assert [(g["member_id"], g["delta_points"]) for g in result["gainers"]] == [("m1", 12)]
    assert [(g["member_id"], g["delta_points"]) for g in result["losers"]] == [("m2", -50)]
    days = {d["day"]: (d["draft_points"], d["actual_points"]) for d in result["days"]}
    first, second = WHEN.date().isoformat(), (WHEN + timedelta(days=1)).date().isoformat()
    assert days[second] == (4, 2)
    assert days[first] == (28, 68)
    assert result["events"] == 5 and result["members"] == 2


async def test_replay_agrees_with_the_live_path(api: Api, other: Api, engine: AsyncEngine) -> None:
    """The draft, activated for real in a second programme on the same events, earns each member
    exactly what the replay says (condition on tags, a filter and a day cap included)."""
    draft = [SPEND, SHOES, VIP]
    await seed(api, [SPEND, SIGNUP])
    await seed(other, draft)
    result = await run(api, engine, body(draft, top=100))
    live = {m: (await other.balance(m))["available"] for m in ("m1", "m2")}
    moved = {d["member_id"]: d["draft_points"] for d in result["gainers"] + result["losers"]}
    assert moved == live
    # m1: 3 vip orders, 7 each, day cap 10 → 7 + 3 on the first day, 7 on the next.
    assert {r["code"]: r["draft_points"] for r in result["rules"]}["vip-bonus"] == 17


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (body([{**SPEND, "budget": "missing"}]), "rules[0].budget"),
        (body([SPEND, {**SHOES, "formula": {"kind": "per_unit", "points": 1}}]), "rules[1].formula.per"),
        (body([SPEND, SPEND]), "rules[1].code"),
        (body([{**VIP, "condition": {"fact": "nope", "op": "==", "value": 1}}]), "rules[0].condition"),
        ({**body([SPEND]), "until": (WHEN - timedelta(days=2)).isoformat()}, "until"),
        ({**body([SPEND]), "since": (WHEN - timedelta(days=500)).isoformat()}, "until"),
    ],
)
async def test_invalid_drafts_name_the_field(api: Api, req: dict[str, Any], field: str) -> None:
    await api.budget("base")
    r = await api.post("/v1/earning-rules/replay", req, expect=None)
    assert field_of(problem(r, 400)).startswith(field)


async def test_only_operators(api: Api) -> None:
    await api.budget("base")
    problem(await api.post("/v1/earning-rules/replay", body([SPEND]), role="ecommerce", expect=None), 403)
    problem(await api.get("/v1/earning-rules/replay/x", role="crm", expect=None), 403)
    problem(await api.get("/v1/earning-rules/replay/nope", expect=None), 404, "replay_not_found")


async def test_progress_is_committed_while_running_and_nothing_is_written(
    api: Api, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(api, [SPEND, SIGNUP])
    pid = api.programme.id
    balances = {m: await api.balance(m) for m in ("m1", "m2")}
    tables = (
        "member_events",
        "transactions",
        "entries",
        "lots",
        "account_balances",
        "earning_rule_usage",
        "member_facts",
    )

    async def snapshot() -> dict[str, Any]:
        async with engine.connect() as conn:
            return {
                t: (
                    await conn.execute(
                        text(f"SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {t} x")
                    )
                ).scalar()
                for t in tables
            }

    tables_before = await snapshot()
    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(replay, "CHUNK", 2)
    original = replay.run_replay

    async def watched(conn: Any, who: Any, req: Any, *, progress: Any = None) -> Any:
        async def spy(done: int, total: int) -> None:
            await progress(done, total)
            job = (await api.get(f"/v1/earning-rules/replay/{job_id}")).json()
            seen.append((job["status"], job["percent"]))

        return await original(conn, who, req, progress=spy)

    monkeypatch.setattr(replay_tasks.replay, "run_replay", watched)
    job_id = (await api.post("/v1/earning-rules/replay", body([SHOES]), expect=202)).json()["job_id"]
    principal = {"programme_id": pid, "programme_code": api.programme.code, "role": "operator"}
    await replay_tasks.replay_earning_rules({"engine": engine, "job_id": job_id}, principal, body([SHOES]))
    assert seen == [("running", 40), ("running", 80), ("running", 100)]
    assert {m: await api.balance(m) for m in ("m1", "m2")} == balances
    assert await snapshot() == tables_before
    async with engine.connect() as conn:
        assert await verify(conn, pid) == []


async def test_the_replay_transaction_is_read_only(api: Api, engine: AsyncEngine) -> None:
    await seed(api, [SPEND])
    import msgspec

    from loyalty.http.principal import Principal

    who = Principal(programme_id=api.programme.id, programme_code=api.programme.code, role="operator")
    req = msgspec.convert(body([SPEND]), replay.ReplayIn)
    async with engine.connect() as conn, conn.begin():
        result = await replay.run_replay(conn, who, req)
        assert result.draft_points == result.actual_points == 20
        with pytest.raises(Exception, match="read-only"):
            await conn.execute(text("DELETE FROM member_events"))
