"""The event path and a rebuild of the facts compute the same facts, and a tier decision rests
only on facts that a rebuild reproduces: late events (occurred_at before the qualification
window) and events out of order included. On the real database, through the real event path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.activity import repository, tasks
from tests.api.helpers import Api
from tests.api.test_events import event, order, rule, setup
from tests.api.test_tiers import ladder, published
from tests.support import make_programme

INTEGER_FACTS = (
    "qualifying_points",
    "spend",
    "orders",
    "lifetime_points",
    "lifetime_spend",
    "lifetime_orders",
)


async def _stored(engine: AsyncEngine, programme_id: int, member: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    f"SELECT {', '.join('f.' + n for n in INTEGER_FACTS)}, f.first_order_at, f.last_order_at "
                    "FROM member_facts f JOIN members m ON m.programme_id = f.programme_id AND m.id = f.member_id "
                    "WHERE m.programme_id = :p AND m.external_id = :e"
                ),
                {"p": programme_id, "e": member},
            )
        ).one()
    return dict(row._mapping)


async def _rebuilt(engine: AsyncEngine, programme_id: int, member: str, *, rebuild: bool) -> dict[str, Any]:
    """The member's facts recomputed from scratch (rebuild) or as the daily refresh does, in a
    transaction that is rolled back: the stored facts are left as the event path made them."""
    async with engine.connect() as conn, conn.begin() as tx:
        found = await repository.member(conn, programme_id, member)
        assert found is not None
        await repository.refresh_facts(
            conn, programme_id, now=datetime.now(UTC), member_id=found[0], rebuild=rebuild
        )
        row = (
            await conn.execute(
                text(
                    f"SELECT {', '.join(INTEGER_FACTS)}, first_order_at, last_order_at FROM member_facts "
                    "WHERE programme_id = :p AND member_id = :m"
                ),
                {"p": programme_id, "m": found[0]},
            )
        ).one()
        await tx.rollback()
    return dict(row._mapping)


def _ago(days: int, hours: int = 1) -> str:
    return (datetime.now(UTC) - timedelta(days=days, hours=hours)).isoformat()


async def test_a_late_order_earns_but_does_not_qualify_or_promote(api: Api, engine: AsyncEngine) -> None:
    await setup(api)  # 1 point per 100 minor units, qualifying
    await published(api)  # silver from 1,000 qualifying points
    late = await event(api, order("m1", 150_000, occurred_at=_ago(400)))
    assert late["points"] == 1_500  # the points are earned all the same
    assert late["facts"]["qualifying_points"] == 0
    assert late["facts"]["lifetime_points"] == 1_500
    assert late["tier"] is None
    assert (await api.get("/v1/members/m1/tier")).json()["tier"] == "bronze"
    # The nightly refresh and a full rebuild agree with what the event answered.
    await tasks.refresh_member_facts({"engine": engine})
    facts = (await api.get("/v1/members/m1/facts")).json()["facts"]
    assert (facts["qualifying_points"], facts["lifetime_points"]) == (0, 1_500)
    assert await _rebuilt(engine, api.programme.id, "m1", rebuild=True) == await _stored(
        engine, api.programme.id, "m1"
    )
    # An order in the window still counts and promotes.
    recent = await event(api, order("m1", 120_000, occurred_at=_ago(3)))
    assert recent["facts"]["qualifying_points"] == 1_200
    assert recent["tier"]["to_tier"] == "silver"


async def test_a_refund_takes_back_on_the_orders_day(api: Api, engine: AsyncEngine) -> None:
    # The order counted in the window 11 months ago; once it has left the window, its refund
    # must not take its spend and qualifying points off the current window a second time.
    await setup(api)
    await event(api, order("m1", 100_000, order_ref="o-old", occurred_at=_ago(400)))
    await event(api, order("m1", 50_000, order_ref="o-new", occurred_at=_ago(2)))
    refund = {
        "event_id": f"e-{uuid.uuid4().hex}",
        "member_id": "m1",
        "type": "order_refunded",
        "order_ref": "o-old",
        "currency": "CNY",
    }
    answer = await event(api, refund)
    assert answer["clawback"]["points"] == 1_000
    assert (answer["facts"]["spend"], answer["facts"]["qualifying_points"]) == (50_000, 500)
    assert await _rebuilt(engine, api.programme.id, "m1", rebuild=True) == await _stored(
        engine, api.programme.id, "m1"
    )


# Days back of an event: recent, late in the window, and before it (never within a few days of
# the window's start, where a test's clock and the event path's could fall on either side).
DAYS_BACK = st.one_of(st.integers(0, 30), st.integers(200, 355), st.integers(375, 900))


@st.composite
def event_sequences(draw: st.DrawFn) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    orders: list[tuple[str, int]] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["order", "order", "refund", "review", "check_in"]))
        days = draw(DAYS_BACK)
        hours = draw(st.integers(1, 20))
        if kind == "refund" and orders:
            ref, amount = draw(st.sampled_from(orders))
            body: dict[str, Any] = {"type": "order_refunded", "order_ref": ref, "currency": "CNY"}
            if draw(st.booleans()):
                body["amount"] = draw(st.integers(1, amount))
        elif kind in ("order", "refund"):
            amount = draw(st.integers(100, 300_000))
            ref = f"o-{len(orders)}"
            orders.append((ref, amount))
            body = {"type": "order_completed", "order_ref": ref, "amount": amount, "currency": "CNY"}
        else:
            body = {"type": kind}
        events.append({**body, "occurred_at": _ago(days, hours)})
    return events


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=event_sequences())
async def test_events_give_the_facts_a_rebuild_gives(
    client: AsyncTestClient[Any], engine: AsyncEngine, sequence: list[dict[str, Any]]
) -> None:
    api = Api(client, await make_programme(engine))
    await setup(api)  # qualifying, 1 point per 100 on orders
    await rule(api, "review-earn", event_type="review", formula={"kind": "fixed", "points": 300})
    await rule(
        api, "check-in-earn", event_type="check_in", formula={"kind": "fixed", "points": 40}, qualifying=False
    )
    definition = ladder()
    definition["tiers"][1]["bonus"] = {"budget": "base", "points": 250}  # a ledger earn, not activity
    version = (await api.post("/v1/tiers/versions", definition)).json()["version"]
    await api.post(f"/v1/tiers/versions/{version}/publish", {}, expect=200)
    for body in sequence:
        r = await api.post(
            "/v1/events",
            {"event_id": f"e-{uuid.uuid4().hex}", "member_id": "m1", **body},
            role="ecommerce",
            expect=None,
        )
        if r.status_code == 400 and body["type"] == "order_refunded":
            continue  # more than the order has left to refund: refused, nothing written
        assert r.status_code == 201, (body, r.text)
        answer = r.json()
        stored = await _stored(engine, api.programme.id, "m1")
        rebuilt = await _rebuilt(engine, api.programme.id, "m1", rebuild=True)
        # What the event answered (and decided the tier on) is what it stored and what a rebuild finds.
        assert {k: answer["facts"][k] for k in INTEGER_FACTS} == {k: stored[k] for k in INTEGER_FACTS}
        assert stored == rebuilt, body
    assert await _rebuilt(engine, api.programme.id, "m1", rebuild=False) == await _stored(
        engine, api.programme.id, "m1"
    )
