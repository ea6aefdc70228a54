"""Every posting that moves a member's points writes its domain event in the same transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, Subscribe


async def _events(engine: AsyncEngine, programme_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT type, subject, payload FROM domain_events WHERE programme_id = :p ORDER BY id"),
            {"p": programme_id},
        )
        return [(r.type, r.subject, r.payload) for r in rows]


async def test_earn_spend_capture_clawback_and_adjust_write_their_events(
    api: Api, engine: AsyncEngine, subscribe: Subscribe
) -> None:
    await subscribe(["*"])
    await api.budget("base", cap=10_000)
    await api.enrol("ann")
    earned = await api.earn("ann", 100, reference="order-1")
    await api.spend("ann", 30)
    hold = (await api.post("/v1/holds", {"member_id": "ann", "points": 20}, role="ecommerce")).json()
    await api.post(f"/v1/holds/{hold['hold_id']}/capture", {"points": 5}, role="ecommerce", expect=200)
    await api.post(
        "/v1/clawbacks", {"member_id": "ann", "reference": "order-1", "points": 10}, role="ecommerce"
    )
    await api.post("/v1/adjustments", {"member_id": "ann", "points": 7, "reason": "goodwill"})
    events = await _events(engine, api.programme.id)
    assert [(t, p["points"]) for t, _, p in events] == [
        ("points.earned", 100),
        ("points.spent", 30),
        ("points.spent", 5),
        ("points.clawed_back", 10),
        ("points.adjusted", 7),
    ]
    assert {subject for _, subject, _ in events} == {"member:ann"}
    first = events[0][2]
    assert first["transaction_id"] == earned["transaction_id"]
    assert (first["budget"], first["reference"], first["member_id"]) == ("base", "order-1", "ann")


async def test_a_refused_posting_writes_no_event(api: Api, engine: AsyncEngine, subscribe: Subscribe) -> None:
    await subscribe(["*"])
    await api.budget("base", cap=10_000)
    await api.enrol("bob")
    await api.post("/v1/spend", {"member_id": "bob", "points": 1}, role="ecommerce", expect=422)
    assert await _events(engine, api.programme.id) == []


async def test_batch_earn_writes_one_event_per_item(
    api: Api, engine: AsyncEngine, subscribe: Subscribe
) -> None:
    await subscribe(["points.earned"])
    await api.budget("base", cap=10_000)
    for member in ("a", "b", "c"):
        await api.enrol(member)
    items = [{"member_id": m, "budget": "base", "points": 10 + i} for i, m in enumerate("abc")]
    await api.post("/v1/earn/batch", {"items": items, "mode": "per_item"}, role="ecommerce")
    events = await _events(engine, api.programme.id)
    assert [(t, s, p["points"]) for t, s, p in events] == [
        ("points.earned", "member:a", 10),
        ("points.earned", "member:b", 11),
        ("points.earned", "member:c", 12),
    ]


async def test_only_subscribed_types_are_written(api: Api, engine: AsyncEngine, subscribe: Subscribe) -> None:
    # Without an endpoint nothing is written (nothing would ever deliver it); with one that wants
    # only points.spent, earns write nothing and spends do.
    await api.budget("base", cap=10_000)
    await api.enrol("cy")
    await api.earn("cy", 50)
    assert await _events(engine, api.programme.id) == []
    await subscribe(["points.spent"])
    await api.earn("cy", 50)
    await api.spend("cy", 20)
    assert [(t, p["points"]) for t, _, p in await _events(engine, api.programme.id)] == [("points.spent", 20)]
