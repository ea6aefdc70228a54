"""The outbox and the delivery worker against real PostgreSQL and a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.http.principal import Principal
from loyalty.webhooks import core, repository, service, tasks
from loyalty.webhooks import schemas as ws
from loyalty.webhooks.targets import TargetPolicy
from tests.support import Programme, make_programme
from tests.webhook_receiver import Receiver

# The receivers listen on 127.0.0.1: these tests run as a deployment that allows it.
LOCAL = TargetPolicy(allow_private=True)


@pytest.fixture(autouse=True)
async def _quiet_endpoints(engine: AsyncEngine) -> AsyncIterator[None]:
    """The worker's claim spans every programme: endpoints of a finished test must not be
    retried by the next one."""
    yield
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE webhook_endpoints SET active = false WHERE active"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


def _who(programme: Programme) -> Principal:
    return Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=0)


async def _endpoint(engine: AsyncEngine, programme: Programme, receiver: Receiver, types: list[str]) -> int:
    async with engine.begin() as conn:
        created = await service.create_endpoint(
            conn, _who(programme), ws.EndpointCreate(url=receiver.url, event_types=types), policy=LOCAL
        )
    receiver.secret = created.secret
    return created.id


async def _event(engine: AsyncEngine, programme: Programme, type_: str, member: str, **payload: Any) -> int:
    """A cause writing its domain event (the outbox row) in its own transaction."""
    async with engine.begin() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "INSERT INTO domain_events (programme_id, type, subject, payload) "
                        "VALUES (:p, :t, :s, CAST(:d AS jsonb)) RETURNING id"
                    ),
                    {
                        "p": programme.id,
                        "t": type_,
                        "s": f"member:{member}",
                        "d": json.dumps({"member_id": member, **payload}),
                    },
                )
            ).scalar_one()
        )


async def _deliveries(engine: AsyncEngine, programme: Programme) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, event_id, event_type, subject, status, attempts, last_status_code, lease_until, last_error "
                "FROM webhook_deliveries WHERE programme_id = :p ORDER BY event_id"
            ),
            {"p": programme.id},
        )
        return [dict(r._mapping) for r in rows]


async def _make_due(engine: AsyncEngine, programme: Programme) -> None:
    """Time passes: every backoff and lease of the programme's deliveries is over."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                # Two statements: Citus allows no now() inside a CASE of an UPDATE.
                "UPDATE webhook_deliveries SET next_attempt_at = now() - interval '1 s' WHERE programme_id = :p"
            ),
            {"p": programme.id},
        )
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET lease_until = now() - interval '1 s' "
                "WHERE programme_id = :p AND lease_until IS NOT NULL"
            ),
            {"p": programme.id},
        )


async def test_events_fan_out_in_their_transaction_and_arrive_signed(engine, receiver) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["points.earned"])
    everything = Receiver()  # a second endpoint of the same programme, subscribed to '*'
    await everything.start()
    try:
        await _endpoint(engine, programme, everything, ["*"])
        earned = await _event(engine, programme, "points.earned", "ann", points=10)
        await _event(engine, programme, "tier.changed", "ann", to_tier="gold")
        # A cause that rolls back leaves no event and so no delivery.
        async with engine.connect() as conn, conn.begin() as tx:
            await conn.execute(
                text(
                    "INSERT INTO domain_events (programme_id, type, subject, payload) "
                    "VALUES (:p, 'points.earned', 'member:ann', '{}')"
                ),
                {"p": programme.id},
            )
            await tx.rollback()
        assert len(await _deliveries(engine, programme)) == 3

        assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 3
    finally:
        await everything.stop()

    assert [r.json["type"] for r in receiver.received] == ["points.earned"]
    first = receiver.received[0]
    assert first.verified and first.status == 204
    assert first.webhook_id == core.message_id(programme.id, earned)
    assert first.json["data"] == {"member_id": "ann", "points": 10}
    assert first.json["timestamp"]
    assert [r.json["type"] for r in everything.received] == ["points.earned", "tier.changed"]
    assert all(r.verified for r in everything.received)
    rows = await _deliveries(engine, programme)
    assert {d["status"] for d in rows} == {"succeeded"}, [(d["status"], d["last_error"]) for d in rows]


async def test_a_500_is_retried_with_backoff_then_succeeds(engine, receiver) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["*"])
    receiver.respond = lambda r, seen: 500 if len(seen) == 1 else 200
    await _event(engine, programme, "points.earned", "bo", points=5)

    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 1
    [delivery] = await _deliveries(engine, programme)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 1, 500)
    async with engine.connect() as conn:
        wait = (
            await conn.execute(
                text(
                    "SELECT extract(epoch FROM next_attempt_at - now()) FROM webhook_deliveries WHERE id = :id"
                ),
                {"id": delivery["id"]},
            )
        ).scalar_one()
    assert 5 < wait <= 12  # 10 s +- 20 % jitter
    # Not due yet: nothing is sent.
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 0

    await _make_due(engine, programme)
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 1
    [delivery] = await _deliveries(engine, programme)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 2, 200)
    assert len(receiver.received) == 2
    assert receiver.received[0].webhook_id == receiver.received[1].webhook_id


async def test_each_members_events_arrive_in_order_under_retries(engine, receiver) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["*"])
    attempts_of_first: list[int] = []

    def respond(r, _seen) -> int:
        # ann's first event fails twice; everything else succeeds at once.
        if r.json["data"]["member_id"] == "ann" and r.json["data"]["n"] == 1:
            attempts_of_first.append(1)
            return 503 if len(attempts_of_first) <= 2 else 200
        return 200

    receiver.respond = respond
    for n in (1, 2, 3):
        await _event(engine, programme, "points.earned", "ann", n=n)
        await _event(engine, programme, "points.earned", "ben", n=n)

    # ann's first event fails: her later ones wait; ben's all go through, in order.
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})
    assert [r.json["data"]["n"] for r in receiver.of("ben")] == [1, 2, 3]
    assert [r.json["data"]["n"] for r in receiver.of("ann")] == [1]
    for _ in range(2):
        await _make_due(engine, programme)
        await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})

    ann = receiver.of("ann")
    assert [(r.json["data"]["n"], r.status) for r in ann] == [
        (1, 503),
        (1, 503),
        (1, 200),
        (2, 200),
        (3, 200),
    ]
    assert {d["status"] for d in await _deliveries(engine, programme)} == {"succeeded"}


async def test_a_worker_killed_mid_delivery_loses_nothing(engine, receiver) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["*"])
    await _event(engine, programme, "points.earned", "cy", n=1)
    await _event(engine, programme, "points.earned", "cy", n=2)

    # The worker claims, posts, and dies while the endpoint is still answering.
    receiver.gate.clear()
    worker = asyncio.create_task(tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}))
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    receiver.gate.set()

    first, second = await _deliveries(engine, programme)
    assert (first["status"], first["attempts"]) == ("pending", 1)
    assert first["lease_until"] is not None
    assert second["attempts"] == 0
    # While the dead worker's lease lasts, no other worker takes the delivery (nor the next one).
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 0

    # The lease runs out: the delivery is sent again, with the same webhook-id, then the next.
    await _make_due(engine, programme)
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 2
    ids = [r.webhook_id for r in receiver.received]
    assert ids[0] == ids[1] != ids[2]
    assert [r.json["data"]["n"] for r in receiver.received] == [1, 1, 2]
    assert [(d["status"], d["attempts"]) for d in await _deliveries(engine, programme)] == [
        ("succeeded", 2),
        ("succeeded", 1),
    ]


async def test_claimed_then_abandoned_and_a_late_outcome_is_ignored(engine, receiver) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["*"])
    await _event(engine, programme, "points.spent", "dee", points=3)
    async with engine.begin() as conn:
        [stale] = await repository.claim_due(conn, limit=10, lease_seconds=60)
    await _make_due(engine, programme)
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 1
    # The first worker wakes up and reports a failure for its old attempt: it is not written.
    async with engine.begin() as conn:
        kept = await repository.record_outcome(
            conn,
            programme_id=stale["programme_id"],
            delivery_id=stale["id"],
            attempts=stale["attempts"],
            status="failed",
            status_code=500,
            error="late",
            next_attempt_at=None,
        )
    assert not kept
    [delivery] = await _deliveries(engine, programme)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2)


async def test_a_dead_delivery_stops_blocking_and_can_be_redelivered(engine, receiver) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["*"])
    receiver.respond = lambda r, _seen: 500 if r.json["data"]["n"] == 1 else 200
    await _event(engine, programme, "points.earned", "eve", n=1)
    await _event(engine, programme, "points.earned", "eve", n=2)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE webhook_deliveries SET attempts = :a WHERE programme_id = :p"),
            {"a": core.MAX_ATTEMPTS - 1, "p": programme.id},
        )
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})
    first, second = await _deliveries(engine, programme)
    assert first["status"] == "dead" and second["status"] == "succeeded"

    receiver.respond = lambda _r, _seen: 200
    async with engine.begin() as conn:
        view = await service.redeliver(conn, _who(programme), first["id"])
    assert (view.status, view.attempts) == ("pending", 0)
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 1
    first, _ = await _deliveries(engine, programme)
    assert (first["status"], first["attempts"]) == ("succeeded", 1)


async def test_paused_endpoints_keep_their_deliveries_until_resumed(engine, receiver) -> None:
    programme = await make_programme(engine)
    endpoint = await _endpoint(engine, programme, receiver, ["*"])
    await _event(engine, programme, "points.earned", "fay", n=1)
    async with engine.begin() as conn:
        await service.update_endpoint(
            conn, _who(programme), endpoint, ws.EndpointUpdate(active=False), policy=LOCAL
        )
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 0
    async with engine.begin() as conn:
        await service.update_endpoint(
            conn, _who(programme), endpoint, ws.EndpointUpdate(active=True), policy=LOCAL
        )
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 1
    assert len(receiver.received) == 1


async def test_an_unreachable_endpoint_is_retried_and_catches_up(engine, receiver) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["*"])
    await receiver.stop()  # the endpoint is down
    await _event(engine, programme, "points.earned", "gus", n=1)
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})
    [delivery] = await _deliveries(engine, programme)
    assert delivery["status"] == "failed" and delivery["last_status_code"] is None
    back = await Receiver(secret=receiver.secret).start()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE webhook_endpoints SET url = :u WHERE programme_id = :p"),
                {"u": back.url, "p": programme.id},
            )
        await _make_due(engine, programme)
        assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 1
        assert back.received[0].verified
    finally:
        await back.stop()


async def test_expiring_soon_is_announced_once_per_lot(engine, receiver) -> None:
    from loyalty.ledger import schemas as ls
    from loyalty.ledger import service as ledger
    from loyalty.members import schemas as ms
    from loyalty.members import service as members

    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["points.expiring_soon"])
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=0)
    async with engine.begin() as conn:
        await service.put_settings(conn, _who(programme), ws.WebhookSettingsUpdate(expiring_soon_days=7))
        await ledger.create_budget(conn, who, ls.BudgetCreate(code="b", cap=10_000, unit_cost_micros=1), "k0")
        for name in ("hal", "ida"):
            await members.enrol(conn, who, ms.MemberCreate(member_id=name), f"e-{name}")
        await ledger.earn(
            conn,
            who,
            ls.EarnRequest(member_id="hal", budget="b", points=40, expiry=ls.ExpiryIn(days=5)),
            "k1",
        )
        await ledger.earn(
            conn, who, ls.EarnRequest(member_id="hal", budget="b", points=7, expiry=ls.ExpiryIn(days=6)), "k2"
        )
        await ledger.earn(
            conn,
            who,
            ls.EarnRequest(member_id="ida", budget="b", points=9, expiry=ls.ExpiryIn(days=30)),
            "k3",
        )

    assert await tasks.notify_expiring_soon({"engine": engine}) == 2
    assert await tasks.notify_expiring_soon({"engine": engine}) == 0
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})
    [notice] = receiver.received
    assert notice.json["type"] == "points.expiring_soon"
    data = notice.json["data"]
    assert (data["member_id"], data["points"], len(data["lots"])) == ("hal", 47, 2)

    # ida's lot enters the notice period later: announced then, hal's lots not again.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE lots SET expires_at = now() + interval '2 days' WHERE programme_id = :p"),
            {"p": programme.id},
        )
    assert await tasks.notify_expiring_soon({"engine": engine}) == 1
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})
    assert [r.json["data"]["member_id"] for r in receiver.received] == ["hal", "ida"]


async def test_history_purge_keeps_open_deliveries_and_what_they_need(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    programme = await make_programme(engine)
    await _endpoint(engine, programme, receiver, ["points.earned"])
    done = await _event(engine, programme, "points.earned", "ann", points=1)
    open_ = await _event(engine, programme, "points.earned", "bob", points=2)
    unsent = await _event(engine, programme, "tier.changed", "cy", to_tier="gold")  # nobody wants it
    recent = await _event(engine, programme, "points.earned", "dan", points=3)
    async with engine.begin() as conn:
        p = {"p": programme.id}
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET status = 'succeeded', succeeded_at = now() - interval '40 days' "
                "WHERE programme_id = :p AND event_id = :e"
            ),
            {**p, "e": done},
        )
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET status = 'succeeded', succeeded_at = now() "
                "WHERE programme_id = :p AND event_id = :e"
            ),
            {**p, "e": recent},
        )
        await conn.execute(
            text(
                "UPDATE domain_events SET created_at = now() - interval '40 days' "
                "WHERE programme_id = :p AND id IN (:a, :b, :c)"
            ),
            {**p, "a": done, "b": open_, "c": unsent},
        )
    await tasks.purge_webhook_history({"engine": engine})
    # The old finished delivery and the old events nothing refers to are gone; the open
    # delivery keeps its (old) event, and the recent ones stay.
    assert [d["event_id"] for d in await _deliveries(engine, programme)] == [open_, recent]
    async with engine.connect() as conn:
        left = (
            (
                await conn.execute(
                    text("SELECT id FROM domain_events WHERE programme_id = :p ORDER BY id"),
                    {"p": programme.id},
                )
            )
            .scalars()
            .all()
        )
    assert left == [open_, recent]
