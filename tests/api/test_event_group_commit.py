"""Member events through group commit (ledger/group_commit.py): the final write of concurrent
events goes to PostgreSQL in the committer's batches, with the ledger's postings, and each event
keeps its own answer, its own idempotency and its own refusal. On the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.activity import recording, repository
from loyalty.activity import schemas as s
from loyalty.db import create_engine, create_posting_pool
from loyalty.errors import Conflict
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.ledger.group_commit import GroupCommitter
from loyalty.settings import Settings
from tests.api.helpers import Api
from tests.api.test_events import order, rule, setup
from tests.api.test_tiers import published
from tests.integration.test_group_commit import _flushes


@pytest.fixture(scope="module")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """Room for a connection per concurrent event (each holds its own while its write waits)."""
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=12)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def committer(settings: Settings) -> AsyncIterator[GroupCommitter]:
    """One flusher: what queues while it is busy goes in its next call."""
    assert settings.database_url is not None
    pool = await create_posting_pool(settings.database_url, size=3)
    committer = GroupCommitter(pool, flushers=1, max_batch=24)
    try:
        yield committer
    finally:
        await committer.close()
        await pool.close()


def _who(api: Api) -> Principal:
    return Principal(
        programme_id=api.programme.id, programme_code=api.programme.code, role="ecommerce", key_id=0
    )


async def _record(
    engine: AsyncEngine, who: Principal, body: dict[str, Any], committer: GroupCommitter | None
) -> tuple[bool, s.EventResult]:
    """As the event lane runs it: a connection whose transaction begins at its first statement."""
    async with engine.connect() as conn, conn.begin():
        return await recording.record_event(conn, who, msgspec.convert(body, s.EventIn), committer=committer)


def _together(monkeypatch: pytest.MonkeyPatch, n: int) -> asyncio.Event:
    """The first n event reads wait for each other, so that their writes reach the committer in
    the same turn of the loop and go in one call; the gate opens when the n-th is read."""
    read_for_event = repository.read_for_event
    gate = asyncio.Event()
    reads = 0

    async def gated(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        row = await read_for_event(*args, **kwargs)
        reads += 1
        if reads == n:
            gate.set()
        if reads <= n:
            await gate.wait()
        return row

    monkeypatch.setattr(repository, "read_for_event", gated)
    return gate


def _counting_writes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    writes = {"done": 0, "replayed": 0, "stale": 0, "transactional": 0}
    write_event = repository.write_event

    async def counted(*args: Any, **kwargs: Any) -> Any:
        assert isinstance(args[0], GroupCommitter), "the write went past the committer"
        try:
            answer = await write_event(*args, **kwargs)
        except repository.StaleRead:
            writes["stale"] += 1
            raise
        except repository.NeedsTransaction:
            writes["transactional"] += 1
            raise
        writes["replayed" if answer[0] else "done"] += 1  # replayed: the id was recorded meanwhile
        return answer

    monkeypatch.setattr(repository, "write_event", counted)
    return writes


def _sent(result: s.EventResult) -> Any:
    """An answer as its JSON reads (the stored one keeps jsonb's key order)."""
    return msgspec.json.decode(msgspec.json.encode(result))


def _delta(before: tuple[float, float]) -> tuple[float, ...]:
    return tuple(a - b for a, b in zip(_flushes(), before, strict=True))


async def test_a_batch_of_events_and_an_earn_with_one_stale_event_commits_the_others(
    api: Api, engine: AsyncEngine, committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup(api)  # 1 point per 100 minor units
    await published(api)  # silver from 1,000 qualifying points
    names = ["m1", "m2", "m3", "m4", "m5", "m6"]
    for name in names[1:]:
        await api.enrol(name)
    who = _who(api)
    await _record(engine, who, order("m1", 100), committer)  # loads the configuration; earns 1
    gate = _together(monkeypatch, 7)
    writes = _counting_writes(monkeypatch)

    async def earn_in_the_same_batch() -> ls.EarnRequest:
        await gate.wait()
        request = ls.EarnRequest(member_id="m2", budget="base", points=7)
        await ledger.earn(committer, who, request, uuid.uuid4().hex)
        return request

    bodies = [order(name, 1_000 * (i + 1)) for i, name in enumerate(names)]
    # A second event of m1 read the same facts as the first: in the batch, after the first
    # wrote them, it is refused stale, alone, and is read, planned and written again.
    bodies.append(order("m1", 120_000))
    before = _flushes()
    *answers, _ = await asyncio.gather(
        *(_record(engine, who, body, committer) for body in bodies), earn_in_the_same_batch()
    )
    # One call for the six fresh events, the stale one and the earn; the stale one again alone.
    assert _delta(before) == (2, 9)
    assert writes == {"done": 7, "replayed": 0, "stale": 1, "transactional": 0}
    results = [result for _, result in answers]
    assert [r.points for r in results] == [10, 20, 30, 40, 50, 60, 1_200]
    assert all(r.rules[0].transaction_id is not None for r in results)
    first, late = results[0], results[6]
    # Whichever of m1's two went second in the batch was refused and then saw the other.
    assert sorted([first.facts["orders"], late.facts["orders"]]) == [2, 3]
    assert late.tier is not None and late.tier.to_tier == "silver"
    balances = {name: (await api.balance(name))["available"] for name in names}
    assert balances == {"m1": 1_211, "m2": 27, "m3": 30, "m4": 40, "m5": 50, "m6": 60}
    assert (await api.get("/v1/members/m1/tier")).json()["tier"] == "silver"
    facts = (await api.get("/v1/members/m1/facts")).json()["facts"]
    assert (facts["orders"], facts["lifetime_points"]) == (3, 1_211)


async def test_an_event_the_budget_pays_short_goes_its_own_way_and_the_batch_commits(
    api: Api, engine: AsyncEngine, committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.budget("base", cap=100)
    names = ["m1", "m2", "m3", "m4", "m5"]
    for name in names:
        await api.enrol(name)
    await rule(api)
    who = _who(api)
    await _record(engine, who, order("m1", 50), committer)  # loads the configuration; earns 0
    _together(monkeypatch, 5)
    writes = _counting_writes(monkeypatch)
    # 20 points each for m1 to m4, then 50 for m5 (the batch runs by member) with 20 left.
    amounts = [2_000, 2_000, 2_000, 2_000, 5_000]
    before = _flushes()
    answers = await asyncio.gather(
        *(_record(engine, who, order(n, a), committer) for n, a in zip(names, amounts, strict=True))
    )
    assert _delta(before) == (1, 5)  # the short one went the transactional way, not alone again
    assert writes == {"done": 4, "replayed": 0, "stale": 0, "transactional": 1}
    outcomes = [(r.rules[0].status, r.points) for _, r in answers]
    assert outcomes == [("earned", 20)] * 4 + [("partial", 20)]
    assert (await api.get("/v1/budgets/base")).json()["issued"] == 100
    for name in names:
        assert (await api.balance(name))["available"] == 20


async def test_one_event_id_three_times_in_one_batch_has_one_effect(
    api: Api, engine: AsyncEngine, committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup(api)
    who = _who(api)
    await _record(engine, who, order("m1", 100), committer)
    _together(monkeypatch, 3)
    writes = _counting_writes(monkeypatch)
    body = order("m1", 10_000, event_id="e-dup")

    async def answer(b: dict[str, Any]) -> tuple[bool, s.EventResult] | Conflict:
        try:
            return await _record(engine, who, b, committer)
        except Conflict as exc:
            return exc

    bodies = [body, body, {**body, "amount": 20_000}]
    before = _flushes()
    answers = await asyncio.gather(*(answer(b) for b in bodies))
    assert _delta(before) == (1, 3)  # the two that found the id recorded replay it from the read
    assert writes == {"done": 1, "replayed": 2, "stale": 0, "transactional": 0}
    # Whichever went first in the batch recorded the event: a send of the same body replays
    # its answer, one of another body is refused (which goes first is the loop's choice).
    [(winner, recorded)] = [(i, a[1]) for i, a in enumerate(answers) if isinstance(a, tuple) and not a[0]]
    for i, a in enumerate(answers):
        if i == winner:
            continue
        if bodies[i] == bodies[winner]:
            assert isinstance(a, tuple) and a[0]
            assert _sent(a[1]) == _sent(recorded)
        else:
            assert isinstance(a, Conflict) and a.code == "event_id_reused"
    assert recorded.points == bodies[winner]["amount"] // 100
    assert (await api.balance("m1"))["available"] == 1 + recorded.points
    async with engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT count(*) FROM member_events WHERE programme_id = :p AND event_id = 'e-dup'"),
            {"p": api.programme.id},
        )
    assert stored == 1


# The same events through batches, or one at a time ----------------------------------------------

MEMBERS = ("ann", "bob", "cat")
events_strategy = st.lists(
    st.tuples(st.sampled_from(MEMBERS), st.integers(0, 3_000), st.booleans()), min_size=2, max_size=10
)


def _answer_of(result: s.EventResult) -> Any:
    """What an event's answer says that does not depend on the order of a member's events."""
    return (result.points, [(o.code, o.fired, o.status, o.points) for o in result.rules])


async def _member_state(api: Api, member: str) -> Any:
    facts = (await api.get(f"/v1/members/{member}/facts")).json()["facts"]
    balance = (await api.balance(member))["available"]
    return balance, facts["orders"], facts["spend"], facts["lifetime_points"], facts["qualifying_points"]


_READY: set[int] = set()


@hsettings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy)
async def test_events_through_a_batch_answer_as_one_at_a_time(
    api: Api, engine: AsyncEngine, committer: GroupCommitter, events: list[tuple[str, int, bool]]
) -> None:
    """Events of a few members (some sent twice, as a client's retry would), each with a plain
    earn beside it: at once through the committer, and on their own calls one at a time, to
    fresh members of the same programme; the events answer alike and the members end alike. No
    caps and no ladder, so that a member's events may commit in any order."""
    who = _who(api)
    if who.programme_id not in _READY:  # the programme is the test's, shared by its examples
        await setup(api, member="warm-up")
        await _record(engine, who, order("warm-up", 100), committer)
        _READY.add(who.programme_id)
    run = uuid.uuid4().hex[:8]
    states = []
    answers = []
    for way in ("batched", "single"):
        names = {m: f"{m}-{way}-{run}" for m in MEMBERS}
        for name in names.values():
            await api.enrol(name)
        first_of: dict[str, dict[str, Any]] = {}
        bodies = [
            # A repeated id carries the body it was first sent with: a retry, answered as a replay.
            first_of.setdefault(
                f"e-{i // 2 if repeat else i}",
                order(names[m], amount, event_id=f"e-{way}-{run}-{i // 2 if repeat else i}"),
            )
            for i, (m, amount, repeat) in enumerate(events)
        ]
        earns = [ls.EarnRequest(member_id=names[m], budget="base", points=3) for m, _, _ in events]
        if way == "batched":
            gathered = await asyncio.gather(
                *(_record(engine, who, body, committer) for body in bodies),
                *(ledger.earn(committer, who, earn, None) for earn in earns),
            )
            results = [r for r in gathered[: len(bodies)] if isinstance(r, tuple)]
        else:
            results = [await _record(engine, who, body, None) for body in bodies]
            async with engine.connect() as plain, plain.begin():
                for earn in earns:
                    await ledger.earn(plain, who, earn, None)
        # Which of two sends of one id is the replay depends on the order they commit in.
        answers.append(sorted((replayed, _answer_of(r)) for replayed, r in results))
        states.append([await _member_state(api, names[m]) for m in MEMBERS])
    assert answers[0] == answers[1]
    assert states[0] == states[1]
