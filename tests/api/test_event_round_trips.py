"""POST /v1/events in two round trips: one read, one write, no BEGIN or COMMIT; a replay in
one. And the optimistic path under contention: many events at once on one member lose no
update of facts, points, cap usage or tier."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg
import msgspec
import pytest
from asyncpg.prepared_stmt import PreparedStatement
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.activity import recording, repository
from loyalty.activity import schemas as s
from loyalty.auth.core import Principal
from tests.api.helpers import Api
from tests.api.test_events import event, order, rule, setup
from tests.api.test_tiers import published


@contextlib.contextmanager
def statements() -> Iterator[list[str]]:
    """Every statement sent to PostgreSQL by any asyncpg connection while open (the SQL text):
    driver calls, SQLAlchemy's prepared statements, and the BEGIN and COMMIT of transactions."""
    seen: list[str] = []
    patches: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, sql_of: Any) -> None:
        original = getattr(owner, name)

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            sql = sql_of(self, args)
            # The key revocation listener pings its own LISTEN connection now and then.
            if sql is not None and sql != "SELECT 1":
                seen.append(" ".join(sql.split()))
            return await original(self, *args, **kwargs)

        patches.append((owner, name, original))
        setattr(owner, name, counted)

    # Connection.execute without arguments is a simple query (BEGIN, COMMIT); with arguments,
    # like fetch and fetchrow, it goes through Connection._execute.
    wrap(asyncpg.Connection, "execute", lambda self, args: None if len(args) > 1 else args[0])
    wrap(asyncpg.Connection, "_execute", lambda self, args: args[0])
    for name in ("fetch", "fetchrow", "fetchval"):
        wrap(PreparedStatement, name, lambda self, args: self.get_query())
    try:
        yield seen
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


async def _usage(engine: AsyncEngine, programme_id: int) -> list[tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT period, points FROM earning_rule_usage WHERE programme_id = :p ORDER BY period"),
            {"p": programme_id},
        )
        return [(r[0], r[1]) for r in rows]


async def test_an_event_is_one_read_and_one_write(api: Api, engine: AsyncEngine) -> None:
    await setup(api, cap_per_day=10_000)  # 1 point per 100, capped: usage rows are read and written
    await published(api)  # a ladder: the tier is decided in the same write
    await event(api, order("m1", 1_000))  # the first event of a programme loads its configuration
    body = order("m1", 120_000)
    with statements() as sent:
        promoted = await event(api, body)
    assert promoted["points"] == 1200 and promoted["tier"]["to_tier"] == "silver"
    assert promoted["rules"][0]["transaction_id"] is not None
    # If this grows, an event takes one more round trip: say why in the commit that changes it.
    assert len(sent) == 2, [s[:80] for s in sent]
    assert "LEFT JOIN member_events ev" in sent[0] and "activity_event_write(" in sent[1]
    assert not any(s.upper().startswith(("BEGIN", "COMMIT")) for s in sent)

    with statements() as sent:
        again = await api.post("/v1/events", body, role="ecommerce")
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == promoted
    assert len(sent) == 1, [s[:80] for s in sent]
    assert (await api.balance("m1"))["available"] == 1210
    assert (await api.get("/v1/members/m1/tier")).json()["tier"] == "silver"
    assert await _usage(engine, api.programme.id) == [("day", 1210)]


async def test_a_refund_takes_the_transactional_way(api: Api) -> None:
    await setup(api)
    await event(api, order("m1", 10_000, order_ref="o-1"))
    refund = {"event_id": "r-1", "member_id": "m1", "type": "order_refunded", "order_ref": "o-1"}
    with statements() as sent:
        result = await event(api, refund)
    assert result["clawback"]["points"] == 100
    assert sent[0] == "BEGIN;" or sent[0].upper().startswith("BEGIN")


def _who(api: Api) -> Principal:
    return Principal(
        programme_id=api.programme.id, programme_code=api.programme.code, role="ecommerce", key_id=0
    )


async def _record(engine: AsyncEngine, who: Principal, body: dict[str, Any]) -> s.EventResult:
    """As the event lane runs it: a connection whose transaction begins at its first statement."""
    async with engine.connect() as conn, conn.begin():
        _, result = await recording.record_event(conn, who, msgspec.convert(body, s.EventIn))
    return result


async def test_a_plan_gone_stale_is_made_again_on_what_changed(
    api: Api, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup(api, cap_per_day=1_000)  # 1 point per 100 minor units, at most 1,000 a day
    await published(api)  # silver from 1,000 qualifying points
    who = _who(api)
    await _record(engine, who, order("m1", 100))  # loads the configuration: later events are optimistic
    read_for_event = repository.read_for_event
    reads: list[str] = []

    async def read_then_let_another_in(*args: Any, **kwargs: Any) -> Any:
        row = await read_for_event(*args, **kwargs)
        reads.append(args[3])
        if len(reads) == 1:  # between the first read and its write, another event of the member
            await _record(engine, who, order("m1", 60_000, event_id="e-between"))
        return row

    monkeypatch.setattr(repository, "read_for_event", read_then_let_another_in)
    late = await _record(engine, who, order("m1", 60_000, event_id="e-late"))
    # e-late read before e-between, was refused stale and planned again on what e-between left.
    assert reads == ["e-late", "e-between", "e-late"]
    assert late.points == 1_000 - 1 - 600 and late.rules[0].status == "partial"
    assert late.facts["orders"] == 3 and late.facts["qualifying_points"] == 1_000
    assert late.tier is not None and late.tier.to_tier == "silver"
    assert (await api.balance("m1"))["available"] == 1_000
    assert await _usage(engine, api.programme.id) == [("day", 1_000)]


@pytest.mark.parametrize("n", [16])
async def test_concurrent_events_on_one_member_lose_no_update(
    api: Api, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    await setup(api, cap_per_day=2_000)  # 1 point per 100 minor units, at most 2,000 a day
    await published(api)  # silver from 1,000 qualifying points
    who = _who(api)
    await _record(engine, who, order("m1", 100))
    writes = {"done": 0, "stale": 0, "transactional": 0}
    write_event = repository.write_event

    async def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            answer = await write_event(*args, **kwargs)
        except repository.StaleRead:
            writes["stale"] += 1
            raise
        except repository.NeedsTransaction:
            writes["transactional"] += 1
            raise
        writes["done"] += 1
        return answer

    monkeypatch.setattr(repository, "write_event", counted)
    amounts = [15_000 + 100 * i for i in range(n)]  # 150 + i points each; together past the cap
    results = await asyncio.gather(*(_record(engine, who, order("m1", a)) for a in amounts))
    # The reads raced: plans went stale and were made again (or went the transactional way).
    assert writes["stale"] > 0 and writes["done"] > 0, writes

    earned = 1 + sum(r.points for r in results)
    assert earned == 2_000  # the day cap, neither exceeded nor left unspent
    facts = (await api.get("/v1/members/m1/facts")).json()["facts"]
    assert facts["orders"] == n + 1 and facts["spend"] == 100 + sum(amounts)
    assert facts["lifetime_points"] == earned and facts["qualifying_points"] == earned
    assert (await api.balance("m1"))["available"] == earned
    assert await _usage(engine, api.programme.id) == [("day", earned)]
    # One promotion, in whichever event crossed 1,000 qualifying points.
    promotions = [r.tier for r in results if r.tier is not None]
    assert [(t.from_tier, t.to_tier) for t in promotions] == [("bronze", "silver")]
    assert (await api.get("/v1/members/m1/tier")).json()["tier"] == "silver"
    # Each answer's facts are those of one moment of a serial order: each orders count once.
    assert sorted(r.facts["orders"] for r in results) == list(range(2, n + 2))
    async with engine.connect() as conn:
        stored = await conn.execute(
            text("SELECT points FROM member_events WHERE programme_id = :p AND response IS NOT NULL"),
            {"p": api.programme.id},
        )
        assert sum(r[0] for r in stored) == earned


async def test_a_budget_paying_less_than_planned_writes_nothing_and_goes_the_transactional_way(
    api: Api, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,200 planned, 899 left in the budget, silver from 1,000: the write refuses, the
    # transactional path counts what was earned and decides the tier on it (no promotion).
    await api.budget("base", cap=900)
    await api.enrol("m1")
    await rule(api)
    await published(api)
    who = _who(api)
    await _record(engine, who, order("m1", 100))  # loads the configuration; earns 1
    refused: list[str] = []
    write_event = repository.write_event

    async def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return await write_event(*args, **kwargs)
        except repository.NeedsTransaction as exc:
            refused.append(str(exc))
            raise

    monkeypatch.setattr(repository, "write_event", counted)
    answer = await _record(engine, who, order("m1", 120_000, event_id="e-big"))
    assert len(refused) == 1
    [outcome] = answer.rules
    assert (outcome.status, outcome.points, outcome.requested) == ("partial", 899, 1200)
    assert answer.facts["qualifying_points"] == 900 and answer.tier is None
    assert (await api.balance("m1"))["available"] == 900
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT count(*), sum(points) FROM member_events WHERE programme_id = :p AND event_id = 'e-big'"
                ),
                {"p": api.programme.id},
            )
        ).one()
    assert tuple(rows) == (1, 899)
    facts = (await api.get("/v1/members/m1/facts")).json()["facts"]
    assert facts["orders"] == 2 and facts["spend"] == 120_100 and facts["lifetime_points"] == 900
