"""The outbox on the cluster (migration 0023): a member's events and deliveries sit on the
member's shard, so an earn or a spend that writes an event stays a single-shard transaction, and
the webhook worker's claim (no FOR UPDATE across shards) still leases each delivery once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.distribution import member_key
from loyalty.webhooks import repository, tasks
from loyalty.webhooks.targets import TargetPolicy
from tests.api.helpers import Api
from tests.citus.routing import FannedOut, single_shard_only
from tests.support import make_programme
from tests.webhook_receiver import Receiver

LOCAL = TargetPolicy(allow_private=True)


@pytest.fixture
async def api(client: AsyncTestClient[Any], engine: AsyncEngine) -> AsyncIterator[Api]:
    yield Api(client, await make_programme(engine))
    # The worker's claim spans every programme: a finished test's endpoints must not be retried.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE webhook_endpoints SET active = false WHERE active"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


async def _endpoint(api: Api, url: str, event_types: list[str]) -> dict[str, Any]:
    return (await api.post("/v1/webhooks/endpoints", {"url": url, "event_types": event_types})).json()


async def _placement(engine: AsyncEngine, table: str, member_id: int) -> tuple[int, str]:
    """The shard index (its position among the table's shards) and the node holding it."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    """
                    WITH s AS (
                        SELECT shardid, row_number() OVER (ORDER BY shardminvalue::bigint) AS i
                        FROM pg_dist_shard WHERE logicalrelid = CAST(:t AS regclass))
                    SELECT s.i, n.nodename || ':' || n.nodeport AS node
                    FROM s
                    JOIN pg_dist_placement p ON p.shardid = s.shardid
                    JOIN pg_dist_node n ON n.groupid = p.groupid
                    WHERE s.shardid = get_shard_id_for_distribution_column(CAST(:t AS regclass), CAST(:m AS bigint))
                    """
                ),
                {"t": table, "m": member_id},
            )
        ).one()
    return int(row.i), str(row.node)


async def _outbox(engine: AsyncEngine, programme_id: int) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                """
                SELECT e.member_id AS event_owner, e.type, e.subject, d.member_id AS delivery_owner
                FROM domain_events e
                JOIN webhook_deliveries d
                  ON d.member_id = e.member_id AND d.programme_id = e.programme_id AND d.event_id = e.id
                WHERE e.programme_id = :p ORDER BY e.created_at, e.id
                """
            ),
            {"p": programme_id},
        )
        return [dict(r._mapping) for r in rows]


async def test_an_earn_and_a_spend_with_a_subscribed_endpoint_stay_on_the_members_shard(
    api: Api, database_url: str, engine: AsyncEngine, receiver: Receiver
) -> None:
    await api.budget(cap=1_000_000)
    created = await _endpoint(api, receiver.url, ["points.earned", "points.spent"])
    receiver.secret = created["secret"]
    members = [f"o-{i}" for i in range(4)]
    for member in members:
        await api.enrol(member)
    for i, member in enumerate(members):
        async with single_shard_only(database_url) as report:
            await api.post(
                "/v1/earn",
                {"member_id": member, "budget": "base", "points": 100, "reference": f"r-{i}"},
                role="ecommerce",
                key=f"earn-{i}",
                expect=201,
            )
        assert report.after, "the proof read no node"
        async with single_shard_only(database_url):
            await api.post(
                "/v1/spend",
                {"member_id": member, "points": 30},
                role="ecommerce",
                key=f"spend-{i}",
                expect=201,
            )

    outbox = await _outbox(engine, api.programme.id)
    assert [(r["type"], r["subject"]) for r in outbox] == [
        (kind, f"member:{m}") for m in members for kind in ("points.earned", "points.spent")
    ]
    for row in outbox:
        member_id = member_key(api.programme.id, row["subject"].removeprefix("member:"))
        assert row["event_owner"] == row["delivery_owner"] == member_id
        member_shard = await _placement(engine, "members", member_id)
        assert await _placement(engine, "domain_events", member_id) == member_shard
        assert await _placement(engine, "webhook_deliveries", member_id) == member_shard

    # The worker delivers them, each member's in order, signed.
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})
    assert len(receiver.received) == 2 * len(members)
    assert all(r.verified and r.status == 204 for r in receiver.received)
    for member in members:
        kinds = [r.json["type"] for r in receiver.received if r.json["data"]["member_id"] == member]
        assert kinds == ["points.earned", "points.spent"]
    deliveries = (await api.get("/v1/webhooks/deliveries")).json()["items"]
    assert {d["status"] for d in deliveries} == {"succeeded"}
    assert len(deliveries) == 2 * len(members)


async def test_the_proof_fails_when_a_members_event_is_written_off_its_node(
    api: Api, database_url: str, engine: AsyncEngine, receiver: Receiver
) -> None:
    # The other side: beside an event that the routed owner places on the member's shard, one
    # owned by an anchor on the other worker makes the transaction a distributed one.
    await _endpoint(api, receiver.url, ["*"])
    await api.enrol("far")
    member_id = member_key(api.programme.id, "far")
    _, node = await _placement(engine, "members", member_id)
    async with engine.connect() as conn:
        anchors = (
            await conn.execute(text("SELECT anchor FROM ledger_anchors ORDER BY shard_index"))
        ).scalars()
        anchor_list = list(anchors)
    far_anchor = None
    for anchor in anchor_list:
        if (await _placement(engine, "members", anchor))[1] != node:
            far_anchor = anchor
            break
    assert far_anchor is not None
    insert = (
        "INSERT INTO domain_events (programme_id, type, subject, payload{owner}) "
        "VALUES (:p, 'test.event', 'member:far', '{{}}'{value})"
    )
    with pytest.raises(FannedOut):
        async with single_shard_only(database_url), engine.begin() as conn:
            await conn.execute(text("SELECT set_config('loyalty.owner', :m, true)"), {"m": str(member_id)})
            await conn.execute(text(insert.format(owner="", value="")), {"p": api.programme.id})
            await conn.execute(
                text(insert.format(owner=", member_id", value=", :a")),
                {"p": api.programme.id, "a": far_anchor},
            )
    async with engine.connect() as conn:
        owners = (
            await conn.execute(
                text("SELECT member_id FROM webhook_deliveries WHERE programme_id = :p ORDER BY event_id"),
                {"p": api.programme.id},
            )
        ).scalars()
        assert list(owners) == [member_id, far_anchor]


async def test_two_workers_claiming_at_once_never_lease_one_delivery_twice(
    api: Api, engine: AsyncEngine, receiver: Receiver
) -> None:
    await api.budget(cap=1_000_000)
    await _endpoint(api, receiver.url, ["points.earned"])
    members = [f"c-{i}" for i in range(6)]
    for member in members:
        await api.enrol(member)
        await api.earn(member, 10, "base")

    async with engine.connect() as first, engine.connect() as second:
        await first.begin()
        await second.begin()
        claimed_first = await repository.claim_due(first, limit=100, lease_seconds=60)
        # The second claim chose the same rows (the first's lease is not committed yet) and
        # waits at their row locks; once the first commits it finds them leased.
        racing = asyncio.create_task(repository.claim_due(second, limit=100, lease_seconds=60))
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second claim did not meet the first one's row locks"
        await first.commit()
        claimed_second = await racing
        await second.commit()
    assert len(claimed_first) == len(members)
    assert all(
        row["member_id"] == member_key(api.programme.id, row["payload"]["member_id"]) for row in claimed_first
    )
    assert claimed_second == []

    # A lease that ran out is claimable again (at-least-once); an unexpired one is not.
    async with engine.begin() as conn:
        assert await repository.claim_due(conn, limit=100, lease_seconds=60) == []
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET lease_until = now() - interval '1 s' WHERE programme_id = :p"
            ),
            {"p": api.programme.id},
        )
    async with engine.begin() as conn:
        again = await repository.claim_due(conn, limit=100, lease_seconds=60)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in claimed_first)
    assert {r["attempts"] for r in again} == {2}


async def test_a_members_events_go_out_in_their_order_whichever_node_drew_their_ids(
    api: Api, engine: AsyncEngine, receiver: Receiver
) -> None:
    # Each node draws ids from its own range: an event written on the member's worker can have
    # a larger id than a later one written from the coordinator (an expiry run, a retried earn).
    receiver.secret = (await _endpoint(api, receiver.url, ["*"]))["secret"]
    await api.enrol("ordered")
    member_id = member_key(api.programme.id, "ordered")
    for event_id, step in ((1 << 50, "first"), (7, "second")):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO domain_events (programme_id, member_id, id, type, subject, payload) "
                    "VALUES (:p, :m, :id, 'test.step', 'member:ordered', "
                    "jsonb_build_object('step', CAST(:s AS text)))"
                ),
                {"p": api.programme.id, "m": member_id, "id": event_id, "s": step},
            )
    async with engine.begin() as conn:
        claimed = await repository.claim_due(conn, limit=100, lease_seconds=60)
    assert [row["payload"]["step"] for row in claimed] == ["first"]
    # The abandoned lease runs out; the worker then sends both, in their order.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET lease_until = now() - interval '1 s' WHERE programme_id = :p"
            ),
            {"p": api.programme.id},
        )
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL}) == 2
    assert [r.json["data"]["step"] for r in receiver.received] == ["first", "second"]
