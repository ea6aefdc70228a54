"""Budgets: create, list, read, top up, move, close, and the rules an earn meets on them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.api.helpers import Api, problem


async def test_create_with_every_field(api: Api) -> None:
    starts = datetime.now(UTC) - timedelta(days=1)
    ends = datetime.now(UTC) + timedelta(days=30)
    view = await api.budget(
        "spring-2026",
        cap=50_000,
        unit_cost_micros=10_000,
        name="Spring campaign",
        starts_at=starts.isoformat(),
        ends_at=ends.isoformat(),
        per_member_cap=500,
        alert_thresholds=[50, 80, 95],
        shards=4,
    )
    assert view["code"] == "spring-2026" and view["name"] == "Spring campaign"
    assert view["status"] == "active"
    assert view["cap"] == 50_000 and view["remaining"] == 50_000 and view["issued"] == 0
    assert view["unit_cost_micros"] == 10_000 and view["per_member_cap"] == 500
    assert view["alert_thresholds"] == [50, 80, 95] and view["alerts_sent"] == []
    assert datetime.fromisoformat(view["starts_at"]) == starts
    assert datetime.fromisoformat(view["ends_at"]) == ends
    assert view["closed_at"] is None
    got = (await api.get("/v1/budgets/spring-2026", role="marketing")).json()
    assert got["issued_cost_micros"] == 0
    assert _normal(got) == _normal(view)


def _normal(view: dict[str, object]) -> dict[str, object]:
    """A budget view without the fields only GET adds, with datetimes parsed (the posting
    engine writes '+00:00' where msgspec writes 'Z')."""
    return {
        k: datetime.fromisoformat(v) if k.endswith("_at") and isinstance(v, str) else v
        for k, v in view.items()
        if k != "issued_cost_micros"
    }


async def test_create_answers_the_same_view_as_get(api: Api) -> None:
    view = await api.budget("b")
    got = (await api.get("/v1/budgets/b")).json()
    assert view == got


async def test_list_and_get_with_issued_remaining_and_cost(api: Api) -> None:
    await api.budget("b-one", cap=1_000, unit_cost_micros=10_000)
    await api.budget("a-two", cap=2_000, unit_cost_micros=5_000)
    await api.enrol("alice")
    await api.earn("alice", 300, "b-one")
    await api.earn("alice", 100, "a-two")
    listed = (await api.get("/v1/budgets", role="marketing")).json()
    assert [b["code"] for b in listed] == ["a-two", "b-one"]
    one = (await api.get("/v1/budgets/b-one")).json()
    assert (one["cap"], one["issued"], one["remaining"]) == (1_000, 300, 700)
    assert one["issued_cost_micros"] == 300 * 10_000
    assert _normal(listed[1]) == _normal(one) and listed[1]["issued_cost_micros"] == one["issued_cost_micros"]
    two = listed[0]
    assert (two["issued"], two["remaining"], two["issued_cost_micros"]) == (100, 1_900, 100 * 5_000)


async def test_get_unknown_budget_is_404(api: Api) -> None:
    problem(await api.get("/v1/budgets/nope", expect=None), 404, "budget_not_found")


async def test_duplicate_code_is_409(api: Api) -> None:
    await api.budget("dup")
    r = await api.post("/v1/budgets", {"code": "dup", "cap": 1, "unit_cost_micros": 1}, expect=None)
    problem(r, 409, "budget_exists")


async def test_top_up(api: Api) -> None:
    await api.budget("b", cap=100)
    await api.enrol("alice")
    await api.earn("alice", 60, "b")
    view = (await api.post("/v1/budgets/b/top-up", {"points": 400, "reason": "more"})).json()
    assert (view["cap"], view["issued"], view["remaining"]) == (500, 60, 440)
    r = await api.post("/v1/budgets/nope/top-up", {"points": 1}, expect=None)
    problem(r, 404, "budget_not_found")


async def test_move_between_budgets(api: Api) -> None:
    await api.budget("from", cap=1_000)
    await api.budget("to", cap=100)
    body = (
        await api.post("/v1/budgets/moves", {"from_budget": "from", "to_budget": "to", "points": 300})
    ).json()
    assert body["transaction_id"] > 0
    assert (body["from"]["cap"], body["from"]["remaining"]) == (700, 700)
    assert (body["to"]["cap"], body["to"]["remaining"]) == (400, 400)
    # More than is left unissued: refused, nothing moved.
    r = await api.post(
        "/v1/budgets/moves", {"from_budget": "from", "to_budget": "to", "points": 701}, expect=None
    )
    problem(r, 422, "budget_exhausted")
    assert (await api.get("/v1/budgets/from")).json()["remaining"] == 700
    r = await api.post(
        "/v1/budgets/moves", {"from_budget": "from", "to_budget": "from", "points": 1}, expect=None
    )
    assert problem(r, 400)["field"] == "to_budget"
    r = await api.post(
        "/v1/budgets/moves", {"from_budget": "from", "to_budget": "nope", "points": 1}, expect=None
    )
    problem(r, 404, "budget_not_found")


async def test_close_returns_the_unissued_and_refuses_earns(api: Api) -> None:
    await api.budget("b", cap=1_000)
    await api.enrol("alice")
    await api.earn("alice", 250, "b")
    view = (await api.post("/v1/budgets/b/close", expect=200)).json()
    assert view["status"] == "closed" and view["closed_at"] is not None
    assert (view["cap"], view["issued"], view["remaining"]) == (250, 250, 0)
    r = await api.post(
        "/v1/earn", {"member_id": "alice", "budget": "b", "points": 1}, role="ecommerce", expect=None
    )
    problem(r, 422, "budget_closed")
    problem(await api.post("/v1/budgets/b/top-up", {"points": 5}, expect=None), 422, "budget_closed")
    problem(await api.post("/v1/budgets/b/close", expect=None), 422, "budget_closed")
    assert (await api.balance("alice"))["available"] == 250


@pytest.mark.parametrize(
    "period",
    [
        {"starts_at": (datetime.now(UTC) + timedelta(days=2)).isoformat()},
        {
            "starts_at": (datetime.now(UTC) - timedelta(days=10)).isoformat(),
            "ends_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        },
    ],
    ids=["not-started", "ended"],
)
async def test_earn_outside_the_period_is_422(api: Api, period: dict[str, str]) -> None:
    await api.budget("b", **period)
    await api.enrol("alice")
    r = await api.post(
        "/v1/earn", {"member_id": "alice", "budget": "b", "points": 1}, role="ecommerce", expect=None
    )
    body = problem(r, 422, "budget_not_active")
    assert body["budget"] == "b"
    assert (await api.balance("alice"))["available"] == 0
    assert (await api.get("/v1/budgets/b")).json()["issued"] == 0


async def test_per_member_cap_and_allow_partial(api: Api) -> None:
    await api.budget("b", cap=10_000, per_member_cap=100)
    await api.enrol("alice")
    await api.enrol("bob")
    await api.earn("alice", 70, "b")
    r = await api.post(
        "/v1/earn", {"member_id": "alice", "budget": "b", "points": 50}, role="ecommerce", expect=None
    )
    body = problem(r, 422, "member_cap_reached")
    assert (body["per_member_cap"], body["issued"], body["requested"]) == (100, 70, 50)
    partial = await api.earn("alice", 50, "b", allow_partial=True)
    assert (partial["amount"], partial["requested"]) == (30, 50)
    assert partial["balance"]["available"] == 100
    r = await api.post(
        "/v1/earn",
        {"member_id": "alice", "budget": "b", "points": 1, "allow_partial": True},
        role="ecommerce",
        expect=None,
    )
    problem(r, 422, "member_cap_reached")
    # The cap is per member: bob still gets his full 100.
    assert (await api.earn("bob", 100, "b"))["amount"] == 100


async def test_exhausted_budget_and_allow_partial(api: Api) -> None:
    await api.budget("b", cap=100, shards=4)
    await api.enrol("alice")
    await api.earn("alice", 60, "b")
    r = await api.post(
        "/v1/earn", {"member_id": "alice", "budget": "b", "points": 50}, role="ecommerce", expect=None
    )
    body = problem(r, 422, "budget_exhausted")
    assert (body["remaining"], body["requested"]) == (40, 50)
    partial = await api.earn("alice", 50, "b", allow_partial=True)
    assert (partial["amount"], partial["requested"], partial["cost_micros"]) == (40, 50, 40 * 10_000)
    view = (await api.get("/v1/budgets/b")).json()
    assert (view["issued"], view["remaining"]) == (100, 0)
    r = await api.post(
        "/v1/earn",
        {"member_id": "alice", "budget": "b", "points": 1, "allow_partial": True},
        role="ecommerce",
        expect=None,
    )
    problem(r, 422, "budget_exhausted")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"alert_thresholds": [80, 50]}, "alert_thresholds"),
        ({"alert_thresholds": [50, 50]}, "alert_thresholds"),
        ({"starts_at": "2026-03-01T00:00:00Z", "ends_at": "2026-02-01T00:00:00Z"}, "ends_at"),
        ({"starts_at": "2026-03-01T00:00:00"}, "starts_at"),
    ],
)
async def test_invalid_budget_rules_are_400(api: Api, fields: dict[str, object], field: str) -> None:
    r = await api.post("/v1/budgets", {"code": "b", "cap": 1, "unit_cost_micros": 1, **fields}, expect=None)
    assert problem(r, 400)["field"] == field
    assert (await api.get("/v1/budgets")).json() == []


@pytest.mark.parametrize("role", ["ecommerce", "crm", "marketing"])
async def test_only_operators_manage_budgets(api: Api, role: str) -> None:
    await api.budget("b")
    for path, body in [
        ("/v1/budgets", {"code": "c", "cap": 1, "unit_cost_micros": 1}),
        ("/v1/budgets/b/top-up", {"points": 1}),
        ("/v1/budgets/moves", {"from_budget": "b", "to_budget": "c", "points": 1}),
        ("/v1/budgets/b/close", None),
    ]:
        problem(await api.post(path, body, role=role, expect=None), 403, "role_not_allowed")
    reads = 200 if role == "marketing" else 403
    assert (await api.get("/v1/budgets", role=role, expect=None)).status_code == reads
    assert (await api.get("/v1/budgets/b", role=role, expect=None)).status_code == reads
