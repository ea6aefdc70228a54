"""A member's year, end to end: orders and a refund move the facts, promotions happen in the
request, the window rolls, validity and grace end, a pin expires, and the scheduled job demotes.

Events carry past ``occurred_at`` times and the scheduled jobs run at a chosen ``now`` a year
ahead, so a year passes in one test without touching the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.activity import repository as activity
from loyalty.tiers.tasks import assess_due
from tests.api.helpers import Api
from tests.api.test_events import event, order, rule
from tests.api.test_tiers import published

DAY = timedelta(days=1)


def at(moment: datetime) -> str:
    return moment.isoformat()


async def tier(api: Api, member: str) -> dict[str, Any]:
    return dict((await api.get(f"/v1/members/{member}/tier")).json())


async def history(api: Api, member: str) -> list[tuple[str, str | None, str | None]]:
    items = (await api.get(f"/v1/members/{member}/tier/history")).json()["items"]
    return [(h["kind"], h["from_tier"], h["to_tier"]) for h in reversed(items)]


async def a_year_later(engine: AsyncEngine, api: Api, now: datetime) -> int:
    """What the worker does on that day: roll the facts' window, then re-assess due tiers."""
    async with engine.begin() as conn:
        await activity.refresh_facts(conn, api.programme.id, now=now)
    return await assess_due(engine, now=now)


async def test_a_members_year(api: Api, engine: AsyncEngine) -> None:
    start = datetime.now(UTC)
    await api.budget("base", cap=10_000_000)
    await rule(api)  # 1 point per 100 minor units, qualifying
    await published(api)  # silver: 1,000 in, 500 to keep, 12 months, 30 days' grace; gold: 5,000 / 3,000
    for member in ("ann", "bob", "dan"):
        await api.enrol(member)

    # Ann: two orders, a partial refund, then a big order: bronze -> silver -> gold in real time.
    first = await event(api, order("ann", 40_000, occurred_at=at(start - 200 * DAY)))
    assert (first["points"], first["tier"]) == (400, None)
    second = await event(api, order("ann", 70_000, order_ref="ann-2", occurred_at=at(start - 100 * DAY)))
    assert second["facts"]["qualifying_points"] == 1_100
    assert (second["tier"]["from_tier"], second["tier"]["to_tier"]) == ("bronze", "silver")
    refund = await event(
        api,
        {
            "event_id": "ann-refund",
            "member_id": "ann",
            "type": "order_refunded",
            "order_ref": "ann-2",
            "amount": 30_000,
            "occurred_at": at(start - 90 * DAY),
        },
    )
    assert refund["points"] == -300 and refund["facts"]["qualifying_points"] == 800
    assert refund["tier"] is None  # an event never demotes, even below the entry threshold
    assert (await tier(api, "ann"))["tier"] == "silver"
    big = await event(api, order("ann", 450_000, occurred_at=at(start - 10 * DAY)))
    assert big["facts"]["qualifying_points"] == 5_300
    assert (big["tier"]["from_tier"], big["tier"]["to_tier"]) == ("silver", "gold")
    assert (await api.balance("ann"))["available"] == 400 + 700 - 300 + 4_500

    # Bob reaches silver; Dan reaches silver and gets a floor pin at gold for a few days.
    await event(api, order("bob", 120_000, occurred_at=at(start - 30 * DAY)))
    await event(api, order("dan", 110_000, occurred_at=at(start - 30 * DAY)))
    pin = {"kind": "floor", "tier": "gold", "until": at(start + 5 * DAY), "reason": "service recovery"}
    assert (await api.post("/v1/members/dan/tier/pin", pin, expect=200)).json()["tier"] == "gold"
    assert [(await tier(api, m))["tier"] for m in ("ann", "bob", "dan")] == ["gold", "silver", "gold"]

    # Nothing is due yet: the job changes nobody.
    assert await a_year_later(engine, api, start + DAY) == 0

    # 13 months on: every order is out of the rolling window, validity has ended.
    later = start + 400 * DAY
    await a_year_later(engine, api, later)
    facts = (await api.get("/v1/members/ann/facts")).json()["facts"]
    assert facts["qualifying_points"] == 0 and facts["orders"] == 0
    assert facts["lifetime_orders"] == 3 and facts["lifecycle"] == "churned"
    # Ann: gold's downgrade policy is "to_qualified" and it has no grace: straight to bronze.
    assert (await tier(api, "ann"))["tier"] == "bronze"
    assert (await history(api, "ann"))[-1] == ("demoted", "gold", "bronze")
    # Bob: silver has 30 days' grace; he keeps silver for now.
    bob = await tier(api, "bob")
    assert bob["tier"] == "silver" and bob["grace_until"] is not None
    assert (await history(api, "bob"))[-1][0] == "grace_started"
    # Dan: the pin ran out long ago; it is cleared, audited, and the rules take over.
    dan = await tier(api, "dan")
    assert dan["pin"] is None and dan["tier"] in ("silver", "bronze")
    assert "pin_expired" in [kind for kind, _, _ in await history(api, "dan")]

    # After the grace, Bob still does not qualify: one step down.
    await a_year_later(engine, api, later + 31 * DAY)
    assert (await tier(api, "bob"))["tier"] == "bronze"
    assert (await history(api, "bob"))[-1] == ("demoted", "silver", "bronze")

    # Every change left a tier.changed event in the outbox, in order.
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT subject, payload->>'to_tier' FROM domain_events "
                "WHERE programme_id = :p AND type = 'tier.changed' AND subject = 'member:ann' ORDER BY id"
            ),
            {"p": api.programme.id},
        )
        assert [r[1] for r in rows] == ["silver", "gold", "bronze"]
