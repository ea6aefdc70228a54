"""A programme's keys see nothing of another programme: its ids answer 404, never 403 or data."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, counts, problem
from tests.support import new_key


async def _first_programme_with_data(api: Api) -> dict[str, Any]:
    await api.budget("shared-code")
    await api.enrol("alice")
    earn = await api.earn("alice", 100, "shared-code", reference="order-1")
    hold = await api.hold("alice", 10)
    return {"txn": earn["transaction_id"], "hold": hold["hold_id"]}


async def test_reads_of_another_programme_are_404(api: Api, other: Api) -> None:
    ids = await _first_programme_with_data(api)
    for path, code in [
        ("/v1/members/alice", "member_not_found"),
        ("/v1/members/alice/balance", "member_not_found"),
        ("/v1/members/alice/expiring", "member_not_found"),
        ("/v1/members/alice/transactions", "member_not_found"),
        (f"/v1/holds/{ids['hold']}", "hold_not_found"),
        (f"/v1/transactions/{ids['txn']}", "transaction_not_found"),
        ("/v1/budgets/shared-code", "budget_not_found"),
    ]:
        problem(await other.get(path, expect=None), 404, code)
    assert (await other.get("/v1/transactions", params={"reference": "order-1"})).json() == []


async def test_writes_against_another_programme_are_404_and_change_nothing(
    api: Api, other: Api, engine: AsyncEngine
) -> None:
    ids = await _first_programme_with_data(api)
    await other.budget("shared-code")
    before = await counts(engine, api.programme.id)
    for path, body, role, code in [
        (
            "/v1/earn",
            {"member_id": "alice", "budget": "shared-code", "points": 5},
            "ecommerce",
            "member_not_found",
        ),
        ("/v1/spend", {"member_id": "alice", "points": 5}, "ecommerce", "member_not_found"),
        ("/v1/holds", {"member_id": "alice", "points": 5}, "ecommerce", "member_not_found"),
        (f"/v1/holds/{ids['hold']}/capture", {}, "ecommerce", "hold_not_found"),
        (f"/v1/holds/{ids['hold']}/void", None, "ecommerce", "hold_not_found"),
        ("/v1/clawbacks", {"member_id": "alice", "reference": "order-1"}, "ecommerce", "member_not_found"),
        (
            "/v1/adjustments",
            {"member_id": "alice", "points": -5, "reason": "x"},
            "operator",
            "member_not_found",
        ),
        ("/v1/member-tokens", {"member_id": "alice"}, "crm", "member_not_found"),
    ]:
        problem(await other.post(path, body, role=role, expect=None), 404, code)
    problem(
        await other.patch("/v1/members/alice", {"status": "closed"}, expect=None), 404, "member_not_found"
    )
    assert await counts(engine, api.programme.id) == before
    assert await api.balance("alice") == {"available": 90, "pending": 0, "held": 10, "expiring_soon": 0}
    assert (await api.get("/v1/members/alice")).json()["status"] == "active"
    assert (await api.get(f"/v1/holds/{ids['hold']}")).json()["status"] == "open"


async def test_budget_codes_are_per_programme(api: Api, other: Api) -> None:
    await _first_programme_with_data(api)
    problem(
        await other.post("/v1/budgets/shared-code/top-up", {"points": 1}, expect=None),
        404,
        "budget_not_found",
    )
    problem(await other.post("/v1/budgets/shared-code/close", expect=None), 404, "budget_not_found")
    # The same code is free in the other programme, and its budget is its own.
    await other.budget("shared-code", cap=5)
    assert (await other.get("/v1/budgets/shared-code")).json()["cap"] == 5
    assert (await api.get("/v1/budgets/shared-code")).json()["cap"] == 100_000


async def test_lists_show_only_the_callers_rows(api: Api, other: Api) -> None:
    await _first_programme_with_data(api)
    await other.budget("mine")
    await other.enrol("bob")
    await other.enrol("alice")  # the same external id, another member
    assert [m["member_id"] for m in (await other.get("/v1/members")).json()["items"]] == ["alice", "bob"]
    assert [m["member_id"] for m in (await api.get("/v1/members")).json()["items"]] == ["alice"]
    assert [b["code"] for b in (await other.get("/v1/budgets")).json()] == ["mine"]
    assert [b["code"] for b in (await api.get("/v1/budgets")).json()] == ["shared-code"]
    assert (await other.get("/v1/members/alice/transactions")).json()["items"] == []
    assert (await other.balance("alice"))["available"] == 0
    report = (await other.get("/v1/reports/liability")).json()
    assert report["lines"] == [] and int(report["outstanding_points"]) == 0


async def test_member_token_reads_its_own_programme(api: Api, other: Api) -> None:
    await _first_programme_with_data(api)
    await other.enrol("alice")
    token = (await other.post("/v1/member-tokens", {"member_id": "alice"}, role="crm")).json()["token"]
    r = await other.client.get("/v1/me/balance", headers={"Authorization": f"Bearer {token}"})
    assert r.json()["available"] == 0


async def test_idempotency_keys_are_per_programme(api: Api, other: Api) -> None:
    await api.budget()
    await other.budget()
    await api.enrol("alice")
    await other.enrol("alice")
    key = new_key()
    first = await api.earn("alice", 10, key=key)
    second = await other.earn("alice", 10, key=key)
    assert second["transaction_id"] != first["transaction_id"]
    assert (await other.balance("alice"))["available"] == 10
