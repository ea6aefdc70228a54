from __future__ import annotations

from sqlalchemy import text

from tests.support import Programme


async def _setup(
    client, programme: Programme, members: int, cap: int, per_member_cap: int | None = None
) -> None:
    body = {"code": "grants", "cap": cap, "unit_cost_micros": 5_000, "shards": 4}
    if per_member_cap:
        body["per_member_cap"] = per_member_cap
    r = await client.post("/v1/budgets", json=body, headers=programme.headers("operator"))
    assert r.status_code == 201, r.text
    for i in range(members):
        r = await client.post("/v1/members", json={"member_id": f"m{i}"}, headers=programme.headers("crm"))
        assert r.status_code == 201, r.text


async def test_batch_earn_all_items_become_earns(client, programme: Programme, engine) -> None:
    await _setup(client, programme, members=5, cap=10_000)
    items = [
        {"member_id": f"m{i % 5}", "budget": "grants", "points": 100 + i, "reference": f"g{i}"}
        for i in range(40)
    ]
    r = await client.post("/v1/earn/batch", json={"items": items}, headers=programme.headers("marketing"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["earned"] == 40 and body["failed"] == 0
    assert body["points"] == sum(100 + i for i in range(40))
    budget = (await client.get("/v1/budgets/grants", headers=programme.headers("operator"))).json()
    assert budget["issued"] == body["points"]
    assert budget["issued_cost_micros"] == body["points"] * 5_000
    total = 0
    for i in range(5):
        bal = (await client.get(f"/v1/members/m{i}/balance", headers=programme.headers("operator"))).json()
        total += bal["available"]
    assert total == body["points"]
    async with engine.connect() as conn:
        unbalanced = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT txn_id FROM entries WHERE programme_id = :p GROUP BY txn_id "
                    "HAVING sum(amount) <> 0) x"
                ),
                {"p": programme.id},
            )
        ).scalar_one()
    assert unbalanced == 0


async def test_batch_all_or_nothing_writes_nothing_on_a_failure(client, programme: Programme) -> None:
    await _setup(client, programme, members=2, cap=1_000)
    items = [
        {"member_id": "m0", "budget": "grants", "points": 600},
        {"member_id": "m1", "budget": "grants", "points": 600},
        {"member_id": "ghost", "budget": "grants", "points": 1},
    ]
    r = await client.post("/v1/earn/batch", json={"items": items}, headers=programme.headers("marketing"))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "batch_rejected"
    assert [f["index"] for f in r.json()["failures"]] == [1, 2]
    budget = (await client.get("/v1/budgets/grants", headers=programme.headers("operator"))).json()
    assert budget["issued"] == 0

    r = await client.post(
        "/v1/earn/batch", json={"items": items, "mode": "per_item"}, headers=programme.headers("marketing")
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["transaction_ids"][0] is not None and body["transaction_ids"][1:] == [None, None]
    assert [(f["index"], f["error"]) for f in body["failures"]] == [
        (1, "budget_exhausted"),
        (2, "member_not_found"),
    ]


async def test_batch_respects_per_member_cap(client, programme: Programme) -> None:
    await _setup(client, programme, members=1, cap=10_000, per_member_cap=250)
    items = [{"member_id": "m0", "budget": "grants", "points": 100} for _ in range(3)]
    r = await client.post(
        "/v1/earn/batch", json={"items": items, "mode": "per_item"}, headers=programme.headers("marketing")
    )
    assert [t is not None for t in r.json()["transaction_ids"]] == [True, True, False]
    assert r.json()["failures"][0]["error"] == "member_cap_reached"


async def test_budget_alerts_fire_once_per_threshold_and_rearm_on_top_up(
    client, programme: Programme, engine
) -> None:
    from loyalty.ledger import repository

    r = await client.post(
        "/v1/budgets",
        json={"code": "b", "cap": 1000, "unit_cost_micros": 1, "alert_thresholds": [50, 80, 100]},
        headers=programme.headers("operator"),
    )
    assert r.status_code == 201, r.text
    await client.post("/v1/members", json={"member_id": "a"}, headers=programme.headers("crm"))

    async def alerts() -> list[int]:
        async with engine.begin() as conn:
            await repository.run_job(conn, "ledger_budget_alerts", 0)
            rows = await conn.execute(
                text(
                    "SELECT (payload->>'threshold_percent')::int FROM domain_events "
                    "WHERE programme_id = :p AND type = 'budget.threshold_reached' ORDER BY id"
                ),
                {"p": programme.id},
            )
            return [row[0] for row in rows]

    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 850},
        headers=programme.headers("ecommerce"),
    )
    assert await alerts() == [50, 80]
    assert await alerts() == [50, 80]  # a second run fires nothing new
    r = await client.post(
        "/v1/budgets/b/top-up", json={"points": 1000}, headers=programme.headers("operator")
    )
    assert r.json()["alerts_sent"] == []  # 850 of 2000 is below 50 %
    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 1150},
        headers=programme.headers("ecommerce"),
    )
    assert await alerts() == [50, 80, 50, 80, 100]


async def test_suspended_member_cannot_earn_or_spend_but_can_be_refunded(
    client, programme: Programme
) -> None:
    await _setup(client, programme, members=1, cap=1_000)
    h = programme.headers
    r = await client.post(
        "/v1/earn",
        json={"member_id": "m0", "budget": "grants", "points": 100, "reference": "o1"},
        headers=h("ecommerce"),
    )
    assert r.status_code == 201
    r = await client.patch("/v1/members/m0", json={"status": "suspended"}, headers=h("crm"))
    assert r.status_code == 200, r.text
    for path, body in (
        ("/v1/earn", {"member_id": "m0", "budget": "grants", "points": 1}),
        ("/v1/spend", {"member_id": "m0", "points": 1}),
        ("/v1/holds", {"member_id": "m0", "points": 1}),
    ):
        r = await client.post(path, json=body, headers=h("ecommerce"))
        assert r.status_code == 422 and r.json()["code"] == "member_not_active", (path, r.text)
    r = await client.post(
        "/v1/earn/batch",
        json={"items": [{"member_id": "m0", "budget": "grants", "points": 1}], "mode": "per_item"},
        headers=h("marketing"),
    )
    assert r.json()["failures"][0]["error"] == "member_not_active"
    r = await client.post(
        "/v1/clawbacks", json={"member_id": "m0", "reference": "o1"}, headers=h("ecommerce")
    )
    assert r.status_code == 201, r.text
    assert r.json()["balance"]["available"] == 0
