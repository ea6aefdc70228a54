"""Cases that once broke the ledger; each must keep verify() clean."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from loyalty.ledger.verify import verify
from tests.support import Programme


async def _start(client, programme: Programme, cap: int = 10_000) -> None:
    r = await client.post(
        "/v1/budgets",
        json={"code": "b", "cap": cap, "unit_cost_micros": 10_000},
        headers=programme.headers("operator"),
    )
    assert r.status_code == 201, r.text
    r = await client.post("/v1/members", json={"member_id": "a"}, headers=programme.headers("crm"))
    assert r.status_code == 201, r.text


async def _past_expiry(engine, programme: Programme, condition: str = "true") -> None:
    """Time passes: the programme's lots (those matching ``condition``) are past their expiry."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE lots SET expires_at = now() - interval '1 second' WHERE programme_id = :p AND {condition}"
            ),
            {"p": programme.id},
        )


async def _clean(engine, programme: Programme) -> None:
    async with engine.connect() as conn:
        assert await verify(conn, programme.id) == []


async def test_void_after_a_refund_into_debt_pays_the_debt_first(
    client, programme: Programme, engine
) -> None:
    h = programme.headers
    await _start(client, programme)
    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 100, "reference": "o1"},
        headers=h("ecommerce"),
    )
    hold = (
        await client.post("/v1/holds", json={"member_id": "a", "points": 100}, headers=h("ecommerce"))
    ).json()
    claw = (
        await client.post("/v1/clawbacks", json={"member_id": "a", "reference": "o1"}, headers=h("ecommerce"))
    ).json()
    assert claw["debt"] == 100 and claw["balance"] == {"available": -100, "pending": 0, "held": 100}
    r = await client.post(f"/v1/holds/{hold['hold_id']}/void", headers=h("ecommerce"))
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == {"available": 0, "pending": 0, "held": 0}
    await _clean(engine, programme)


async def test_concurrent_refunds_of_one_order_take_it_back_once(
    programme: Programme, engine, client
) -> None:
    from loyalty.errors import Unprocessable
    from loyalty.http.principal import Principal
    from loyalty.ledger import schemas as s
    from loyalty.ledger import service

    await _start(client, programme)
    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 100, "reference": "o1"},
        headers=programme.headers("ecommerce"),
    )
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=0)

    async def refund(i: int) -> str:
        try:
            async with engine.begin() as conn:
                await service.clawback(conn, who, s.ClawbackRequest(member_id="a", reference="o1"), f"k{i}")
            return "ok"
        except Unprocessable as exc:
            return exc.code

    results = await asyncio.gather(*(refund(i) for i in range(4)))
    assert sorted(results) == ["clawback_exceeds_earned"] * 3 + ["ok"]
    await _clean(engine, programme)


async def test_refund_into_a_closed_budget_goes_back_to_funding(client, programme: Programme, engine) -> None:
    h = programme.headers
    await _start(client, programme, cap=1_000)
    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 100, "reference": "o1"},
        headers=h("ecommerce"),
    )
    r = await client.post("/v1/budgets/b/close", headers=h("operator"))
    assert r.json()["cap"] == 100 and r.json()["remaining"] == 0
    r = await client.post("/v1/clawbacks", json={"member_id": "a", "reference": "o1"}, headers=h("ecommerce"))
    assert r.status_code == 201, r.text
    budget = (await client.get("/v1/budgets/b", headers=h("operator"))).json()
    assert (budget["cap"], budget["remaining"], budget["issued"]) == (0, 0, 0)
    await _clean(engine, programme)


async def test_expired_points_are_never_spent_even_before_the_expiry_job(
    client, programme: Programme, engine
) -> None:
    h = programme.headers
    await _start(client, programme)
    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 100, "expiry": {"days": 30}},
        headers=h("ecommerce"),
    )
    await client.post(
        "/v1/earn", json={"member_id": "a", "budget": "b", "points": 50}, headers=h("ecommerce")
    )
    await _past_expiry(engine, programme, "expires_at IS NOT NULL")
    r = await client.post("/v1/spend", json={"member_id": "a", "points": 60}, headers=h("ecommerce"))
    assert r.status_code == 422 and r.json()["available"] == 50, r.text
    r = await client.post("/v1/spend", json={"member_id": "a", "points": 50}, headers=h("ecommerce"))
    assert r.status_code == 201 and r.json()["balance"]["available"] == 0
    history = (
        await client.get("/v1/members/a/transactions", params={"kind": "expire"}, headers=h("operator"))
    ).json()
    assert [i["amount"] for i in history["items"]] == [-100]
    await _clean(engine, programme)


async def test_close_racing_top_ups_and_moves_leaves_nothing_in_the_closed_budget(
    client, programme: Programme, engine
) -> None:
    from loyalty.errors import DomainError
    from loyalty.http.principal import Principal
    from loyalty.ledger import schemas as s
    from loyalty.ledger import service

    who = Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=0)
    async with engine.begin() as conn:
        for code in ("x", "y"):
            await service.create_budget(
                conn, who, s.BudgetCreate(code=code, cap=1_000, unit_cost_micros=1), code
            )

    async def run(i: int) -> str:
        try:
            async with engine.begin() as conn:
                if i == 5:
                    await service.close_budget(conn, who, "x", "close")
                elif i % 2:
                    await service.top_up_budget(conn, who, "x", s.BudgetTopUp(points=10), f"t{i}")
                else:
                    await service.move_budget(
                        conn, who, s.BudgetMove(from_budget="y", to_budget="x", points=10), f"m{i}"
                    )
            return "ok"
        except DomainError as exc:
            return exc.code

    results = await asyncio.gather(*(run(i) for i in range(12)))
    assert set(results) <= {"ok", "budget_closed"}, results
    x = (await client.get("/v1/budgets/x", headers=programme.headers("operator"))).json()
    assert x["status"] == "closed" and x["remaining"] == 0
    await _clean(engine, programme)


async def test_an_expired_pending_lot_does_not_block_a_spend_of_available_points(
    client, programme: Programme, engine
) -> None:
    h = programme.headers
    await _start(client, programme)
    await client.post(
        "/v1/earn", json={"member_id": "a", "budget": "b", "points": 50}, headers=h("ecommerce")
    )
    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 80, "pending_days": 14, "expiry": {"days": 30}},
        headers=h("ecommerce"),
    )
    await _past_expiry(engine, programme, "NOT vested")
    for path, body in (
        ("/v1/holds", {"member_id": "a", "points": 20}),
        ("/v1/spend", {"member_id": "a", "points": 30}),
    ):
        r = await client.post(path, json=body, headers=h("ecommerce"))
        assert r.status_code == 201, r.text
    balance = (await client.get("/v1/members/a/balance", headers=h("operator"))).json()
    assert (balance["available"], balance["pending"], balance["held"]) == (0, 0, 20)
    await _clean(engine, programme)


async def test_under_clamp_a_hold_on_expired_points_is_refused_not_an_error(engine, client) -> None:
    from tests.support import make_programme

    programme = await make_programme(engine, clawback_policy="clamp")
    h = programme.headers
    await _start(client, programme)
    await client.post(
        "/v1/earn",
        json={"member_id": "a", "budget": "b", "points": 1, "expiry": {"days": 30}},
        headers=h("ecommerce"),
    )
    await _past_expiry(engine, programme)
    for path in ("/v1/holds", "/v1/spend"):
        r = await client.post(path, json={"member_id": "a", "points": 1}, headers=h("ecommerce"))
        assert r.status_code == 422 and r.json()["code"] == "insufficient_points", r.text
        assert r.json()["available"] == 0
    await _clean(engine, programme)
