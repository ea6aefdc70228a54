"""Clawbacks: a refund reverses what an order's reference earned, all or part, by policy."""

from __future__ import annotations

from tests.api.helpers import Api, problem


async def test_full_clawback(api: Api) -> None:
    await api.budget("b", cap=1_000, unit_cost_micros=10_000)
    await api.enrol("alice")
    earn = await api.earn("alice", 100, "b", reference="order-1")
    await api.earn("alice", 7, "b", reference="order-2")
    claw = await api.clawback("alice", "order-1")
    assert claw["kind"] == "clawback" and claw["reference"] == "order-1"
    assert (claw["requested"], claw["clawed_back"], claw["from_earned_lots"]) == (100, 100, 100)
    assert (claw["from_other_points"], claw["debt"], claw["written_off"]) == (0, 0, 0)
    assert claw["policy"] == "negative" and claw["cost_micros"] == 100 * 10_000
    assert claw["balance"] == {"available": 7, "pending": 0, "held": 0}
    # The budget gets its points back.
    assert (await api.get("/v1/budgets/b")).json()["issued"] == 7
    txn = (await api.get(f"/v1/transactions/{claw['transaction_id']}")).json()
    assert txn["reverses_id"] == earn["transaction_id"] and txn["amount"] == -100
    assert sum(e["amount"] for e in txn["entries"]) == 0
    # Nothing left to claw back.
    r = await api.post(
        "/v1/clawbacks", {"member_id": "alice", "reference": "order-1"}, role="ecommerce", expect=None
    )
    problem(r, 422, "clawback_exceeds_earned")


async def test_partial_clawbacks(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.earn("alice", 100, reference="order-1")
    first = await api.clawback("alice", "order-1", 30)
    assert (first["requested"], first["clawed_back"]) == (30, 30)
    assert first["balance"]["available"] == 70
    r = await api.post(
        "/v1/clawbacks",
        {"member_id": "alice", "reference": "order-1", "points": 71},
        role="ecommerce",
        expect=None,
    )
    body = problem(r, 422, "clawback_exceeds_earned")
    assert (body["clawable"], body["requested"]) == (70, 71)
    rest = await api.clawback("alice", "order-1")
    assert rest["clawed_back"] == 70 and rest["balance"]["available"] == 0


async def test_clawback_of_pending_points(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.earn("alice", 60, reference="order-1", pending_days=30)
    claw = await api.clawback("alice", "order-1", 20)
    assert claw["balance"] == {"available": 0, "pending": 40, "held": 0}


async def test_unknown_reference_is_404(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 10, reference="order-1")
    await api.enrol("bob")
    r = await api.post(
        "/v1/clawbacks", {"member_id": "alice", "reference": "nope"}, role="ecommerce", expect=None
    )
    problem(r, 404, "reference_not_found")
    # The reference is alice's, not bob's.
    r = await api.post(
        "/v1/clawbacks", {"member_id": "bob", "reference": "order-1"}, role="ecommerce", expect=None
    )
    problem(r, 404, "reference_not_found")
    r = await api.post(
        "/v1/clawbacks", {"member_id": "nobody", "reference": "order-1"}, role="ecommerce", expect=None
    )
    problem(r, 404, "member_not_found")
    assert (await api.balance("alice"))["available"] == 10


async def test_more_than_earned_is_422(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 50, reference="order-1")
    r = await api.post(
        "/v1/clawbacks",
        {"member_id": "alice", "reference": "order-1", "points": 51},
        role="ecommerce",
        expect=None,
    )
    body = problem(r, 422, "clawback_exceeds_earned")
    assert (body["clawable"], body["requested"]) == (50, 51)
    assert (await api.balance("alice"))["available"] == 50


async def test_negative_policy_puts_a_spent_earn_into_debt(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.earn("alice", 100, reference="order-1")
    await api.earn("alice", 20, reference="order-2")
    await api.spend("alice", 110)
    claw = await api.clawback("alice", "order-1")
    assert claw["policy"] == "negative"
    # Spends take the oldest lot first: order-1 keeps 0, order-2 keeps 10.
    assert (claw["from_earned_lots"], claw["from_other_points"], claw["debt"], claw["written_off"]) == (
        0,
        10,
        90,
        0,
    )
    assert claw["balance"]["available"] == -90
    assert (await api.balance("alice"))["available"] == -90
    # A later earn pays the debt off first.
    later = await api.earn("alice", 100, reference="order-3")
    assert later["balance"]["available"] == 10
    r = await api.post("/v1/spend", {"member_id": "alice", "points": 11}, role="ecommerce", expect=None)
    problem(r, 422, "insufficient_points")
    await api.spend("alice", 10)


async def test_clamp_policy_writes_a_spent_earn_off(api: Api) -> None:
    assert (await api.patch("/v1/programme", {"clawback_policy": "clamp"})).json()[
        "clawback_policy"
    ] == "clamp"
    await api.budget("b", cap=1_000)
    await api.enrol("alice")
    await api.earn("alice", 100, "b", reference="order-1")
    await api.earn("alice", 20, "b", reference="order-2")
    await api.spend("alice", 110)
    claw = await api.clawback("alice", "order-1")
    assert claw["policy"] == "clamp"
    assert (claw["from_earned_lots"], claw["from_other_points"], claw["debt"], claw["written_off"]) == (
        0,
        10,
        0,
        90,
    )
    assert claw["balance"]["available"] == 0
    assert (await api.balance("alice"))["available"] == 0
    # The written-off points stay issued; only the 10 collected go back to the budget.
    assert (await api.get("/v1/budgets/b")).json()["issued"] == 110
    later = await api.earn("alice", 5, "b")
    assert later["balance"]["available"] == 5


async def test_policy_patch_applies_to_members_enrolled_before(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.earn("alice", 100, reference="order-1")
    await api.spend("alice", 100)
    await api.patch("/v1/programme", {"clawback_policy": "clamp"})
    claw = await api.clawback("alice", "order-1", 40)
    assert (claw["debt"], claw["written_off"]) == (0, 40)
    assert claw["balance"]["available"] == 0


async def test_marketing_and_crm_cannot_claw_back(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 10, reference="order-1")
    for role in ("crm", "marketing"):
        r = await api.post(
            "/v1/clawbacks", {"member_id": "alice", "reference": "order-1"}, role=role, expect=None
        )
        problem(r, 403, "role_not_allowed")
    assert (await api.balance("alice"))["available"] == 10
