"""POST /v1/benefits/{code}/consume and /reserve, fast routes: what each answer costs in
statements (one benefit_consume call; two when a campaign's segment rule has to be evaluated),
and that the one statement keeps the route's contract (errors, replays, outbox rows)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, problem
from tests.api.test_benefits import benefit, consume, set_tier
from tests.conftest import citus_run


class _CountingPool:
    """The app's posting pool, each connection it lends logging the statements it sends."""

    def __init__(self, pool: asyncpg.Pool, log: Callable[[Any], None]) -> None:
        self.pool = pool
        self.log = log

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire(timeout=timeout) as conn:
            conn.add_query_logger(self.log)
            try:
                yield conn
            finally:
                conn.remove_query_logger(self.log)


@contextmanager
def counted(api: Api) -> Iterator[list[str]]:
    """Every statement the app sends while this is open, on its posting pool (asyncpg) and
    through its SQLAlchemy engine: what a request costs in round trips."""
    statements: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    state = api.client.app.state
    original = state.posting_pool
    state.posting_pool = _CountingPool(original, lambda record: statements.append(record.query))
    engine: AsyncEngine = state.engine
    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)
        state.posting_pool = original


@contextmanager
def one_request(statements: list[str]) -> Iterator[list[str]]:
    statements.clear()
    yield statements


async def reserve(api: Api, code: str, member: str, order: str, expect: int | None = 201) -> Any:
    body = {"member_id": member, "order_reference": order}
    return await api.post(f"/v1/benefits/{code}/reserve", body, role="ecommerce", expect=expect)


async def test_consume_and_reserve_are_one_statement_each(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "returns", "quota", params={"limit": 3, "period": "month"})
    await api.enrol("m1")
    await set_tier(engine, api, "m1", "gold")
    await api.client.put(
        "/v1/tier-benefits/gold",
        json={"benefits": [{"benefit": "returns", "params": {"limit": 5}}]},
        headers=api.headers(),
    )
    with counted(api) as statements:
        await consume(api, "returns", "m1", "warm-up")  # the API key is looked up and cached
        with one_request(statements) as sent:
            body = (await consume(api, "returns", "m1", "o1")).json()
        assert (body["state"], body["limit"], body["remaining"]) == ("committed", 5, 3)
        assert len(sent) == 1 and "benefit_consume(" in sent[0], sent
        with one_request(statements) as sent:
            body = (await reserve(api, "returns", "m1", "o2")).json()
        assert (body["state"], body["remaining"]) == ("reserved", 2)
        assert len(sent) == 1, sent
        with one_request(statements) as sent:
            again = await consume(api, "returns", "m1", "o1")
        assert again.json()["replayed"] is True and len(sent) == 1, sent
        with one_request(statements) as sent:
            await consume(api, "returns", "m1", "o3")
            await consume(api, "returns", "m1", "o4")
            problem(await consume(api, "returns", "m1", "o5", expect=409), 409, "quota_exhausted")
        assert len(sent) == 3, sent


async def test_a_running_segment_campaign_costs_a_second_statement(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "q", "quota", params={"limit": 1, "period": "day"})
    await api.enrol("sh", attributes={"city": "sh"})
    await api.enrol("bj", attributes={"city": "bj"})
    await api.post(
        "/v1/segments", {"code": "city-sh", "rule": {"fact": "attributes.city", "op": "==", "value": "sh"}}
    )
    now = datetime.now(UTC)
    await api.post(
        "/v1/benefit-campaigns",
        {
            "code": "q-sh",
            "segment": "city-sh",
            "benefit": "q",
            "starts_at": (now - timedelta(days=1)).isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
            "params": {"limit": 2},
        },
        role="marketing",
    )
    with counted(api) as statements:
        await consume(api, "q", "sh", "warm-up")
        with one_request(statements) as sent:
            body = (await consume(api, "q", "sh", "o1")).json()
        # The campaign's limit (2) beats the benefit's (1): its rule matched the member's facts.
        assert (body["limit"], body["remaining"]) == (2, 0)
        assert len(sent) == 2, sent
        with one_request(statements) as sent:
            refused = problem(await consume(api, "q", "bj", "o2", expect=409), 409, "benefit_not_available")
        assert refused["reason"] == "not_entitled"
        assert len(sent) == 2, sent
        # A replay is answered before any rule is asked for.
        with one_request(statements) as sent:
            assert (await consume(api, "q", "sh", "o1")).json()["replayed"] is True
        assert len(sent) == 1, sent

    # The segment's rule changes: the next use is decided on the new rule.
    await api.client.patch(
        "/v1/segments/city-sh",
        json={"rule": {"fact": "attributes.city", "op": "==", "value": "bj"}},
        headers=api.headers(),
    )
    problem(await consume(api, "q", "sh", "o3", expect=409), 409)
    assert (await consume(api, "q", "bj", "o4")).json()["limit"] == 2


async def test_errors_keep_their_codes_and_order(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "ship", channels=["app"])
    await benefit(api, "old", valid_until=(datetime.now(UTC) - timedelta(days=1)).isoformat())
    await benefit(api, "q", "quota", params={"limit": 1, "period": "year"})
    await api.enrol("m1")
    await api.enrol("m2")
    for code in ("ship", "old", "q"):
        await api.post("/v1/members/m1/benefit-grants", {"benefit": code, "reason": "t"}, role="crm")

    problem(await consume(api, "nope", "m1", "o", expect=404), 404, "benefit_not_found")
    problem(await consume(api, "ship", "ghost", "o", expect=404), 404, "member_not_found")
    body = {"member_id": "m1", "order_reference": "o1", "channel": "web"}
    r = await api.post("/v1/benefits/ship/consume", body, role="ecommerce", expect=409)
    assert problem(r, 409, "benefit_not_available")["reason"] == "channel_not_allowed"
    body["channel"] = "app"
    assert (await api.post("/v1/benefits/ship/consume", body, role="ecommerce")).json()[
        "state"
    ] == "committed"
    assert problem(await consume(api, "old", "m1", "o1", expect=409), 409)["reason"] == "benefit_expired"
    assert problem(await consume(api, "ship", "m2", "o2", expect=409), 409)["reason"] == "not_entitled"
    # The same order for another member (on Citus an order reference is unique per member, as
    # idempotency keys are: it is m2's own order there, who is not entitled).
    reused = "benefit_not_available" if citus_run() else "order_reference_reused"
    problem(await consume(api, "ship", "m2", "o1", expect=409), 409, reused)

    await consume(api, "q", "m1", "q1")
    exhausted = problem(await consume(api, "q", "m1", "q2", expect=409), 409, "quota_exhausted")
    assert exhausted["remaining"] == 0
    # A refused order left no claim behind: once the use is given back, the same order passes.
    await api.post("/v1/benefits/q/consumptions/q1/release", {}, role="ecommerce", expect=200)
    assert (await consume(api, "q", "m1", "q2")).json()["remaining"] == 0

    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE members SET status = 'suspended' WHERE programme_id = :p AND external_id = 'm1'"),
            {"p": api.programme.id},
        )
    problem(await consume(api, "ship", "m1", "o9", expect=409), 409, "member_not_active")
    # A known order still answers as it did.
    assert (await consume(api, "ship", "m1", "o1")).json()["replayed"] is True

    # The lane decodes the body strictly and checks the role, as the documented handler would.
    r = await api.post("/v1/benefits/ship/consume", {"member_id": "m1"}, role="ecommerce", expect=400)
    problem(r, 400)
    r = await api.post(
        "/v1/benefits/ship/reserve",
        {"member_id": "m1", "order_reference": "x", "hold_seconds": 1},
        role="ecommerce",
        expect=400,
    )
    assert problem(r, 400)["field"] == "hold_seconds"
    r = await api.post(
        "/v1/benefits/ship/consume",
        {"member_id": "m1", "order_reference": "x", "extra": 1},
        role="ecommerce",
        expect=400,
    )
    problem(r, 400)
    problem(
        await api.post("/v1/benefits/ship/consume", body, role="marketing", expect=403),
        403,
        "role_not_allowed",
    )


async def test_consume_writes_the_outbox_row_and_reserve_does_not(api: Api, engine: AsyncEngine) -> None:
    await benefit(api, "q", "quota", params={"limit": 5, "period": "year"})
    await api.enrol("m1")
    await api.post("/v1/members/m1/benefit-grants", {"benefit": "q", "reason": "t"}, role="crm")
    await consume(api, "q", "m1", "o1")
    await reserve(api, "q", "m1", "o2")
    await consume(api, "q", "m1", "o1")  # a replay writes nothing
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT subject, payload FROM domain_events "
                    "WHERE programme_id = :p AND type = 'benefit.consumed' ORDER BY id"
                ),
                {"p": api.programme.id},
            )
        ).all()
    assert [(r.subject, r.payload) for r in rows] == [
        (
            "member:m1",
            {
                "member_id": "m1",
                "benefit": "q",
                "order_reference": "o1",
                "state": "committed",
                "period_start": f"{datetime.now(UTC).year}-01-01",
                "remaining": 4,
                "used": None,
            },
        )
    ]


async def test_concurrent_consumes_through_the_lane_take_exactly_the_quota(api: Api) -> None:
    await benefit(api, "q", "quota", params={"limit": 7, "period": "day"})
    await api.enrol("m1")
    await api.post("/v1/members/m1/benefit-grants", {"benefit": "q", "reason": "t"}, role="crm")

    async def one(i: int) -> int:
        path = "/v1/benefits/q/reserve" if i % 2 else "/v1/benefits/q/consume"
        body = {"member_id": "m1", "order_reference": f"o{i}"}
        r = await api.client.post(path, json=body, headers=api.headers("ecommerce"))
        return r.status_code

    codes = await asyncio.gather(*(one(i) for i in range(40)))
    assert sorted(set(codes)) == [201, 409]
    assert codes.count(201) == 7


async def test_the_documented_routes_are_the_served_ones(api: Api) -> None:
    """consume and reserve are fast routes: OpenAPI documents the body each lane decodes, the
    201 answer, and no Idempotency-Key (the order reference is the key)."""
    schema = (await api.client.get("/schema/openapi.json")).json()
    for name, body in (("consume", "ConsumeRequest"), ("reserve", "ReserveRequest")):
        operation = schema["paths"][f"/v1/benefits/{{code}}/{name}"]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(body)
        assert operation["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ConsumptionResult"
        )
        assert "Idempotency-Key" not in {p["name"] for p in operation.get("parameters", [])}


async def test_commit_and_release_may_name_the_orders_member(api: Api) -> None:
    await benefit(api, "q", "quota", params={"limit": 3, "period": "day"})
    for member in ("m1", "m2"):
        await api.enrol(member)
        await api.post(f"/v1/members/{member}/benefit-grants", {"benefit": "q", "reason": "t"}, role="crm")
    await reserve(api, "q", "m1", "o1")
    await reserve(api, "q", "m1", "o2")
    path = "/v1/benefits/q/consumptions/{}/{}?member_id={}"
    # Another member's order, or an unknown member: not found, and nothing moves.
    for member in ("m2", "ghost"):
        r = await api.post(path.format("o1", "commit", member), None, role="ecommerce", expect=404)
        problem(r, 404, "consumption_not_found")
    done = (await api.post(path.format("o1", "commit", "m1"), None, role="ecommerce", expect=200)).json()
    assert (done["member_id"], done["state"], done.get("replayed", False)) == ("m1", "committed", False)
    gone = (await api.post(path.format("o2", "release", "m1"), None, role="ecommerce", expect=200)).json()
    assert gone["state"] == "released"
    checked = (await api.get("/v1/benefits/q/check", role="ecommerce", params={"member_id": "m1"})).json()
    assert (checked["remaining"], checked["limit"]) == (2, 3)
