"""The lean write path (fast_routes.FastLane) behaves like any route: auth, roles, limits, problems."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, counts, problem
from tests.support import new_key


async def test_a_body_over_the_limit_is_413_and_writes_nothing(api: Api, engine: AsyncEngine) -> None:
    await api.budget()
    await api.enrol("alice")
    before = await counts(engine, api.programme.id)
    body = {"member_id": "alice", "budget": "base", "points": 5, "metadata": {"pad": "x" * (1024 * 1024)}}
    r = await api.client.post("/v1/earn", json=body, headers=api.headers("ecommerce", new_key()))
    problem(r, 413, "request_too_large")
    assert await counts(engine, api.programme.id) == before


@pytest.mark.parametrize(
    "path", ["/v1/earn", "/v1/spend", "/v1/holds", "/v1/holds/1/capture", "/v1/holds/1/void"]
)
async def test_a_role_outside_the_lane_is_403_before_the_body_is_read(api: Api, path: str) -> None:
    # crm may not post points; the body is not even valid JSON, and the answer is still 403.
    headers = {**api.headers("crm", new_key()), "content-type": "application/json"}
    r = await api.client.post(path, content=b"{not json", headers=headers)
    assert problem(r, 403, "role_not_allowed")["allowed"]


async def test_the_answer_is_the_engines_json_with_replay_header(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    key = new_key()
    body = {"member_id": "alice", "budget": "base", "points": 7}
    first = await api.client.post("/v1/earn", json=body, headers=api.headers("ecommerce", key))
    again = await api.client.post("/v1/earn", json=body, headers=api.headers("ecommerce", key))
    assert first.status_code == again.status_code == 201
    assert first.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json() == again.json()
    assert first.json()["amount"] == 7


async def test_capture_and_void_read_the_hold_id_from_the_path(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.post("/v1/earn", {"member_id": "alice", "budget": "base", "points": 50}, role="ecommerce")
    hold = (await api.post("/v1/holds", {"member_id": "alice", "points": 20}, role="ecommerce")).json()
    captured = await api.post(
        f"/v1/holds/{hold['hold_id']}/capture", {"points": 5}, role="ecommerce", expect=200
    )
    assert captured.json()["hold_id"] == hold["hold_id"]
    r = await api.client.post("/v1/holds/999999999/void", headers=api.headers("ecommerce", new_key()))
    problem(r, 404)
