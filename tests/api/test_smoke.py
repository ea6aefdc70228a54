from __future__ import annotations

from tests.support import Programme


async def test_enrol_budget_earn_spend_roundtrip(client, programme: Programme) -> None:
    op = programme.headers("operator")
    r = await client.post(
        "/v1/budgets", json={"code": "welcome", "cap": 1000, "unit_cost_micros": 10_000}, headers=op
    )
    assert r.status_code == 201, r.text
    r = await client.post("/v1/members", json={"member_id": "alice"}, headers=programme.headers("crm"))
    assert r.status_code == 201, r.text
    h = programme.headers("ecommerce")
    r = await client.post(
        "/v1/earn", json={"member_id": "alice", "budget": "welcome", "points": 300}, headers=h
    )
    assert r.status_code == 201, r.text
    assert r.json()["balance"]["available"] == 300
    r2 = await client.post(
        "/v1/earn", json={"member_id": "alice", "budget": "welcome", "points": 300}, headers=h
    )
    assert r2.json() == r.json() and r2.headers["idempotent-replayed"] == "true"
    r = await client.post(
        "/v1/spend", json={"member_id": "alice", "points": 500}, headers=programme.headers("ecommerce")
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["available"] == 300
    r = await client.get("/v1/members/alice/balance", headers=op)
    assert r.json()["available"] == 300
