"""Idempotency over HTTP: a replay answers the first answer and has no second effect."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, counts, problem
from tests.support import new_key


async def _alice_with(api: Api, points: int = 100) -> None:
    await api.budget()
    await api.member_with("alice", points, reference="order-1")
    await api.enrol("bob")


async def _replay(api: Api, engine: AsyncEngine, path: str, body: dict[str, Any] | None, status: int) -> None:
    key = new_key()
    first = await api.post(path, body, key=key, expect=status)
    assert "idempotent-replayed" not in first.headers
    before = await counts(engine, api.programme.id)
    balance = await api.balance("alice")
    second = await api.post(path, body, key=key, expect=status)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert await counts(engine, api.programme.id) == before
    assert await api.balance("alice") == balance


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/earn", {"member_id": "alice", "budget": "base", "points": 10, "expiry": {"days": 30}}),
        ("/v1/spend", {"member_id": "alice", "points": 10}),
        ("/v1/holds", {"member_id": "alice", "points": 10}),
        ("/v1/clawbacks", {"member_id": "alice", "reference": "order-1", "points": 10}),
        ("/v1/adjustments", {"member_id": "alice", "points": -10, "reason": "x"}),
        ("/v1/transfers", {"from_member_id": "alice", "to_member_id": "bob", "points": 10}),
        ("/v1/earn/batch", {"items": [{"member_id": "alice", "budget": "base", "points": 10}]}),
        ("/v1/budgets", {"code": "new", "cap": 10, "unit_cost_micros": 1}),
        ("/v1/budgets/base/top-up", {"points": 10}),
        ("/v1/budgets/moves", {"from_budget": "base", "to_budget": "spare", "points": 10}),
        ("/v1/members", {"member_id": "carol", "attributes": {"a": 1}}),
    ],
)
async def test_same_key_same_body_replays(
    api: Api, engine: AsyncEngine, path: str, body: dict[str, Any]
) -> None:
    await _alice_with(api)
    await api.budget("spare")
    await _replay(api, engine, path, body, 201)


async def test_capture_void_and_close_replay(api: Api, engine: AsyncEngine) -> None:
    await _alice_with(api)
    hold = await api.hold("alice", 10)
    await _replay(api, engine, f"/v1/holds/{hold['hold_id']}/capture", {"points": 4}, 200)
    hold = await api.hold("alice", 10)
    await _replay(api, engine, f"/v1/holds/{hold['hold_id']}/void", None, 200)
    await _replay(api, engine, "/v1/budgets/base/close", None, 200)


async def test_same_key_other_body_is_409(api: Api, engine: AsyncEngine) -> None:
    await _alice_with(api)
    key = new_key()
    await api.earn("alice", 10, key=key)
    before = await counts(engine, api.programme.id)
    for path, body in [
        ("/v1/earn", {"member_id": "alice", "budget": "base", "points": 11}),
        ("/v1/earn", {"member_id": "alice", "budget": "base", "points": 10, "reference": "x"}),
        ("/v1/spend", {"member_id": "alice", "points": 10}),  # the same key on another operation
    ]:
        r = await api.post(path, body, role="ecommerce", key=key, expect=None)
        body_ = problem(r, 409, "idempotency_key_reused")
        assert body_["key"] == key
    assert await counts(engine, api.programme.id) == before
    assert (await api.balance("alice"))["available"] == 110


async def test_same_key_for_another_hold_is_409(api: Api) -> None:
    await _alice_with(api)
    one = await api.hold("alice", 10)
    two = await api.hold("alice", 10)
    key = new_key()
    await api.post(f"/v1/holds/{one['hold_id']}/void", key=key, expect=200)
    r = await api.post(f"/v1/holds/{two['hold_id']}/void", key=key, expect=None)
    problem(r, 409, "idempotency_key_reused")
    assert (await api.get(f"/v1/holds/{two['hold_id']}")).json()["status"] == "open"


async def test_a_refused_request_leaves_no_key(api: Api, engine: AsyncEngine) -> None:
    await _alice_with(api, 10)
    key = new_key()
    body = {"member_id": "alice", "points": 50}
    keys = (await counts(engine, api.programme.id))["idempotency_keys"]
    r = await api.post("/v1/spend", body, role="ecommerce", key=key, expect=None)
    problem(r, 422, "insufficient_points")
    assert (await counts(engine, api.programme.id))["idempotency_keys"] == keys
    await api.earn("alice", 40)
    spent = await api.post("/v1/spend", body, role="ecommerce", key=key)
    assert "idempotent-replayed" not in spent.headers
    assert spent.json()["balance"]["available"] == 0
    again = await api.post("/v1/spend", body, role="ecommerce", key=key)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == spent.json()


async def test_a_refused_enrol_leaves_no_key(api: Api) -> None:
    await api.enrol("alice")
    key = new_key()
    problem(await api.post("/v1/members", {"member_id": "alice"}, key=key, expect=None), 409, "member_exists")
    # The key is free: used for another member, it enrols them.
    await api.post("/v1/members", {"member_id": "bob"}, key=key)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/earn", {"member_id": "alice", "budget": "base", "points": 1}),
        ("/v1/spend", {"member_id": "alice", "points": 1}),
        ("/v1/holds", {"member_id": "alice", "points": 1}),
        ("/v1/holds/1/capture", {}),
        ("/v1/holds/1/void", None),
        ("/v1/clawbacks", {"member_id": "alice", "reference": "order-1"}),
        ("/v1/adjustments", {"member_id": "alice", "points": 1, "reason": "x"}),
        ("/v1/transfers", {"from_member_id": "alice", "to_member_id": "bob", "points": 1}),
        ("/v1/earn/batch", {"items": [{"member_id": "alice", "budget": "base", "points": 1}]}),
        ("/v1/budgets", {"code": "new", "cap": 1, "unit_cost_micros": 1}),
        ("/v1/budgets/base/top-up", {"points": 1}),
        ("/v1/budgets/moves", {"from_budget": "base", "to_budget": "new", "points": 1}),
        ("/v1/budgets/base/close", None),
        ("/v1/members", {"member_id": "carol"}),
    ],
)
async def test_missing_key_is_400_naming_the_header(
    api: Api, engine: AsyncEngine, path: str, body: dict[str, Any] | None
) -> None:
    # The header is checked before anything is read, so an empty programme is enough.
    before = await counts(engine, api.programme.id)
    headers = {"Authorization": f"Bearer {api.programme.keys['operator']}"}
    r = await api.client.post(path, json=body, headers=headers)
    assert "Idempotency-Key" in problem(r, 400)["detail"]
    for bad in ("", "k" * 201):
        r = await api.client.post(path, json=body, headers={**headers, "Idempotency-Key": bad})
        # Named after the handler's parameter here ('idempotency_key: ...'), not the header.
        assert "idempotency" in problem(r, 400)["detail"].lower()
    assert await counts(engine, api.programme.id) == before


async def test_concurrent_duplicates_post_once(api: Api, engine: AsyncEngine) -> None:
    await api.budget()
    await api.enrol("alice")
    key = new_key()
    body = {"member_id": "alice", "budget": "base", "points": 25}
    answers = await asyncio.gather(
        *(api.client.post("/v1/earn", json=body, headers=api.headers("ecommerce", key)) for _ in range(4))
    )
    assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
    assert sum(r.headers.get("idempotent-replayed") != "true" for r in answers) == 1
    assert len({r.json()["transaction_id"] for r in answers}) == 1
    assert (await api.balance("alice"))["available"] == 25
