"""An order event on the cluster: one single-shard transaction on its member's worker, though it
earns points, updates the member's facts and activity day, uses a rule's cap and promotes the
member's tier (docs/scaling.md, "How the schema is distributed")."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.activity import recording
from loyalty.distribution import member_key
from loyalty.ledger.verify import verify
from tests.api.helpers import Api
from tests.api.test_event_round_trips import statements
from tests.api.test_events import event, order, setup
from tests.api.test_tiers import published
from tests.citus.routing import FannedOut, single_shard_only
from tests.support import make_programme


@pytest.fixture
async def api(client: AsyncTestClient[Any], engine: AsyncEngine) -> Api:
    return Api(client, await make_programme(engine))


async def _state(engine: AsyncEngine, api: Api, member: str) -> dict[str, Any]:
    key = member_key(api.programme.id, member)
    sql = """
        SELECT (SELECT lifetime_points FROM member_facts WHERE programme_id = :p AND member_id = :m) AS points,
               (SELECT orders FROM member_activity_days WHERE programme_id = :p AND member_id = :m) AS orders,
               (SELECT tier FROM member_tiers WHERE programme_id = :p AND member_id = :m) AS tier,
               (SELECT count(*) FROM member_tier_history WHERE programme_id = :p AND member_id = :m) AS moves,
               (SELECT sum(points) FROM earning_rule_usage WHERE programme_id = :p AND member_id = :m) AS used,
               (SELECT count(*) FROM member_events WHERE programme_id = :p AND member_id = :m) AS events
    """
    async with engine.connect() as conn:
        return dict((await conn.execute(text(sql), {"p": api.programme.id, "m": key})).one()._mapping)


async def test_an_order_that_earns_and_promotes_is_one_single_shard_transaction(
    api: Api, database_url: str, engine: AsyncEngine
) -> None:
    await setup(api, cap_per_day=100_000)  # 1 point per 100, capped: usage rows are read and written
    await published(api)  # silver from 1,000 qualifying points
    members = [f"m-{i}" for i in range(6)]
    for member in members:
        await api.enrol(member)
    # The programme's first event loads its configuration (not the path under test).
    await event(api, order("m1", 1_000))
    for member in members:
        async with single_shard_only(database_url) as report:
            with statements() as sent:
                promoted = await event(api, order(member, 150_000))
        assert report.after, "the proof read no node"
        # The optimistic path: one read, one write (a fallback would be a transaction).
        assert len(sent) == 2 and "activity_event_write(" in sent[1], [s[:80] for s in sent]
        assert promoted["points"] == 1500 and promoted["tier"]["to_tier"] == "silver"
        assert promoted["rules"][0]["transaction_id"] is not None
        state = await _state(engine, api, member)
        assert state == {"points": 1500, "orders": 1, "tier": "silver", "moves": 1, "used": 1500, "events": 1}
        assert (await api.balance(member))["available"] == state["points"]
    # The write was delegated: a function of the members' colocation group, by its member.
    async with engine.connect() as conn:
        delegated = (
            await conn.execute(
                text(
                    "SELECT o.distribution_argument_index, o.colocationid = p.colocationid FROM pg_dist_object o, "
                    "pg_dist_partition p WHERE o.objid = 'activity_event_write'::regproc "
                    "AND p.logicalrelid = 'members'::regclass"
                )
            )
        ).one()
    assert tuple(delegated) == (1, True)
    # A replay is answered from the member's shard too.
    body = order("m-0", 500)
    first = await event(api, body)
    async with single_shard_only(database_url):
        again = await api.post("/v1/events", body, role="ecommerce")
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == first
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []


async def test_the_proof_fails_when_the_event_takes_the_transactional_way(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The witness: the same event, recorded the transactional way (statement by statement from
    the coordinator, not routed as a whole), is refused."""
    await setup(api, cap_per_day=100_000)
    await published(api)
    await event(api, order("m1", 1_000))
    monkeypatch.setattr(recording, "_OPTIMISTIC_ATTEMPTS", 0)
    with pytest.raises(FannedOut):
        async with single_shard_only(database_url):
            promoted = await event(api, order("m1", 150_000))
    assert promoted["tier"]["to_tier"] == "silver"  # the event itself went through


async def test_a_changed_rule_or_ladder_is_seen_by_the_next_event(api: Api) -> None:
    """The config tables carry no config_version trigger on Citus: their writers move it, or
    the event path would keep planning on the configuration it cached."""
    await setup(api)  # 1 point per 100
    assert (await event(api, order("m1", 10_000)))["points"] == 100
    assert (await event(api, order("m1", 10_000)))["points"] == 100  # now from the cache
    await api.patch("/v1/earning-rules/base-earn", {"formula": {"kind": "per_unit", "points": 3, "per": 100}})
    assert (await event(api, order("m1", 10_000)))["points"] == 300
    await published(api)  # silver from 1,000 qualifying points (the member has 500)
    promoted = await event(api, order("m1", 20_000))
    assert promoted["points"] == 600 and promoted["tier"]["to_tier"] == "silver"
