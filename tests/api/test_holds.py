"""Holds: reserve points for a checkout, then capture all or part, or void them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.api.helpers import Api, problem


async def _alice_with(api: Api, points: int = 100) -> None:
    await api.budget()
    await api.member_with("alice", points)


async def test_create_and_get(api: Api) -> None:
    await _alice_with(api)
    before = datetime.now(UTC)
    hold = await api.hold("alice", 40, reference="cart-1", timeout_seconds=600)
    assert hold["status"] == "open" and hold["amount"] == 40 and hold["captured"] == 0
    assert hold["reference"] == "cart-1" and hold["closed_at"] is None and hold["member_id"] == "alice"
    expires = datetime.fromisoformat(hold["expires_at"])
    assert before + timedelta(seconds=600) <= expires <= datetime.now(UTC) + timedelta(seconds=600)
    assert hold["balance"] == {"available": 60, "pending": 0, "held": 40}
    got = (await api.get(f"/v1/holds/{hold['hold_id']}", role="marketing")).json()
    assert got["hold_id"] == hold["hold_id"] and got["status"] == "open" and got["amount"] == 40
    assert (await api.balance("alice"))["held"] == 40
    problem(await api.get("/v1/holds/999999999", expect=None), 404, "hold_not_found")


async def test_hold_more_than_available_is_422(api: Api) -> None:
    await _alice_with(api, 10)
    r = await api.post("/v1/holds", {"member_id": "alice", "points": 11}, role="ecommerce", expect=None)
    problem(r, 422, "insufficient_points")
    assert await api.balance("alice") == {"available": 10, "pending": 0, "held": 0, "expiring_soon": 0}


async def test_capture_part_returns_the_rest(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 40)
    path = f"/v1/holds/{hold['hold_id']}/capture"
    body = (await api.post(path, {"points": 25}, role="ecommerce", expect=200)).json()
    assert body["status"] == "captured" and body["captured"] == 25 and body["amount"] == 40
    assert body["closed_at"] is not None and body["transaction_id"] > 0
    assert body["cost_micros"] == 25 * 10_000
    assert body["balance"] == {"available": 75, "pending": 0, "held": 0}
    assert await api.balance("alice") == {"available": 75, "pending": 0, "held": 0, "expiring_soon": 0}
    txn = (await api.get(f"/v1/transactions/{body['transaction_id']}")).json()
    assert txn["kind"] == "capture" and txn["amount"] == -25
    assert sum(e["amount"] for e in txn["entries"]) == 0


async def test_capture_twice_is_409(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 40)
    path = f"/v1/holds/{hold['hold_id']}/capture"
    await api.post(path, {"points": 25}, role="ecommerce", expect=200)
    r = await api.post(path, {"points": 5}, role="ecommerce", expect=None)
    body = problem(r, 409, "hold_not_open")
    assert body["hold_id"] == hold["hold_id"]


async def test_void_after_capture_is_409(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 40)
    await api.post(f"/v1/holds/{hold['hold_id']}/capture", {}, role="ecommerce", expect=200)
    r = await api.post(f"/v1/holds/{hold['hold_id']}/void", role="ecommerce", expect=None)
    problem(r, 409, "hold_not_open")


async def test_a_closed_hold_stays_closed(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 40)
    path = f"/v1/holds/{hold['hold_id']}"
    await api.post(f"{path}/capture", {"points": 25}, role="ecommerce", expect=200)
    for action, body in (("capture", {"points": 5}), ("void", None)):
        r = await api.post(f"{path}/{action}", body, role="ecommerce", expect=None)
        problem(r, 409, "hold_not_open")
    got = (await api.get(path)).json()
    assert (got["status"], got["captured"]) == ("captured", 25)
    assert (await api.balance("alice"))["available"] == 75


async def test_capture_without_points_takes_the_whole_hold(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 30)
    body = (await api.post(f"/v1/holds/{hold['hold_id']}/capture", {}, role="operator", expect=200)).json()
    assert body["captured"] == 30 and body["balance"] == {"available": 70, "pending": 0, "held": 0}


async def test_capture_more_than_held_is_422(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 30)
    r = await api.post(f"/v1/holds/{hold['hold_id']}/capture", {"points": 31}, role="ecommerce", expect=None)
    body = problem(r, 422, "capture_exceeds_hold")
    assert (body["amount"], body["requested"]) == (30, 31)
    got = (await api.get(f"/v1/holds/{hold['hold_id']}")).json()
    assert got["status"] == "open"
    assert (await api.balance("alice")) == {"available": 70, "pending": 0, "held": 30, "expiring_soon": 0}


async def test_void_gives_everything_back(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 30)
    body = (await api.post(f"/v1/holds/{hold['hold_id']}/void", role="ecommerce", expect=200)).json()
    assert body["status"] == "voided" and body["captured"] == 0
    assert body["balance"] == {"available": 100, "pending": 0, "held": 0}
    assert (await api.get(f"/v1/holds/{hold['hold_id']}")).json()["status"] == "voided"


async def test_unknown_hold_is_404(api: Api) -> None:
    await _alice_with(api)
    for path, body in (("/v1/holds/999999999/capture", {}), ("/v1/holds/999999999/void", None)):
        problem(await api.post(path, body, role="ecommerce", expect=None), 404, "hold_not_found")


async def test_held_points_are_not_spendable(api: Api) -> None:
    await _alice_with(api)
    await api.hold("alice", 80)
    r = await api.post("/v1/spend", {"member_id": "alice", "points": 21}, role="ecommerce", expect=None)
    assert problem(r, 422, "insufficient_points")["available"] == 20


async def test_crm_and_marketing_cannot_hold(api: Api) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 10)
    for role in ("crm", "marketing"):
        r = await api.post("/v1/holds", {"member_id": "alice", "points": 1}, role=role, expect=None)
        problem(r, 403, "role_not_allowed")
        r = await api.post(f"/v1/holds/{hold['hold_id']}/capture", {}, role=role, expect=None)
        problem(r, 403, "role_not_allowed")
        r = await api.post(f"/v1/holds/{hold['hold_id']}/void", role=role, expect=None)
        problem(r, 403, "role_not_allowed")
