"""Group commit (ledger/group_commit.py): concurrent postings go as one call and one commit,
and each keeps its own idempotency, answer and error. On the real PostgreSQL.

Postings are made through the ledger services with the committer as their connection, as the
HTTP lanes make them; the single-call reference runs the same services on a plain connection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.db import create_posting_pool
from loyalty.errors import DomainError
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as s
from loyalty.ledger import service
from loyalty.ledger.group_commit import GroupCommitter, _Op, batch_order, for_settings
from loyalty.ledger.repository import Posted
from loyalty.ledger.verify import verify
from loyalty.members import schemas as ms
from loyalty.members import service as members
from loyalty.observability.metrics import GROUP_COMMIT_BATCH
from loyalty.settings import Settings
from tests.support import make_programme


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url is not None
    pool = await create_posting_pool(settings.database_url, size=8)
    try:
        yield pool
    finally:
        await pool.close()


async def _programme(engine: AsyncEngine, names: list[str], **budgets: int) -> Principal:
    programme = await make_programme(engine)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=0)
    async with engine.begin() as conn:
        for name in names:
            await members.enrol(conn, who, ms.MemberCreate(member_id=name), None)
        for code, cap in budgets.items():
            await service.create_budget(
                conn, who, s.BudgetCreate(code=code, cap=cap, unit_cost_micros=1), None
            )
    return who


def _flushes() -> tuple[float, float]:
    """(flushes, postings flushed) so far in this process."""
    count = total = 0.0
    for metric in GROUP_COMMIT_BATCH.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


async def _answer(call: Any) -> Posted | DomainError:
    try:
        return await call
    except DomainError as exc:
        return exc


def _earn(member: str, points: int, budget: str = "base", **extra: Any) -> s.EarnRequest:
    return s.EarnRequest(member_id=member, budget=budget, points=points, **extra)


async def _balance(engine: AsyncEngine, who: Principal, member: str) -> s.Balance:
    async with engine.connect() as conn:
        return await service.balance(conn, who, member)


async def test_concurrent_postings_go_in_fewer_calls_than_postings(
    engine: AsyncEngine, pool: asyncpg.Pool
) -> None:
    names = [f"m{i}" for i in range(40)]
    who = await _programme(engine, names, base=10_000)
    committer = GroupCommitter(pool, flushers=1, max_batch=64)
    before = _flushes()
    results = await asyncio.gather(
        *(service.earn(committer, who, _earn(n, 5), uuid.uuid4().hex) for n in names)
    )
    flushes, postings = (a - b for a, b in zip(_flushes(), before, strict=True))
    assert postings == 40
    assert flushes < 40 / 4, f"{flushes} calls for 40 postings"
    assert all(not r.replayed for r in results)
    assert [msgspec.json.decode(r.body)["member_id"] for r in results] == names  # each its own answer
    for name in names:
        assert (await _balance(engine, who, name)).available == 5


async def test_a_lone_posting_goes_at_once_as_a_batch_of_one(engine: AsyncEngine, pool: asyncpg.Pool) -> None:
    who = await _programme(engine, ["solo"], base=100)
    committer = GroupCommitter(pool, flushers=2, max_batch=64)
    before = _flushes()
    result = await asyncio.wait_for(service.earn(committer, who, _earn("solo", 7), "k1"), timeout=5)
    assert tuple(a - b for a, b in zip(_flushes(), before, strict=True)) == (1, 1)
    assert msgspec.json.decode(result.body)["amount"] == 7
    assert (await _balance(engine, who, "solo")).available == 7


async def test_one_posting_over_its_budget_fails_alone(engine: AsyncEngine, pool: asyncpg.Pool) -> None:
    names = [f"m{i}" for i in range(12)]
    who = await _programme(engine, names, base=100)
    committer = GroupCommitter(pool, flushers=1, max_batch=64)
    asks = [5] * 12
    asks[6] = 1_000  # over what the budget has left
    before = _flushes()
    results = await asyncio.gather(
        *(
            _answer(service.earn(committer, who, _earn(n, p), f"k{n}"))
            for n, p in zip(names, asks, strict=True)
        )
    )
    assert tuple(a - b for a, b in zip(_flushes(), before, strict=True)) == (1, 12), "one batch of all 12"
    refused = results[6]
    assert isinstance(refused, DomainError) and refused.code == "budget_exhausted"
    assert refused.extra["requested"] == 1_000
    for i, (name, result) in enumerate(zip(names, results, strict=True)):
        if i != 6:
            assert isinstance(result, Posted), result
            assert (await _balance(engine, who, name)).available == 5
    assert (await _balance(engine, who, names[6])).available == 0
    # The refused key left nothing behind: a retry with it, within the budget, posts.
    again = await service.earn(committer, who, _earn(names[6], 5), f"k{names[6]}")
    assert not again.replayed


async def test_one_key_twice_in_a_batch_has_one_effect(engine: AsyncEngine, pool: asyncpg.Pool) -> None:
    who = await _programme(engine, ["ann", "bob"], base=1_000)
    committer = GroupCommitter(pool, flushers=1, max_batch=64)
    before = _flushes()
    first, same, other_body, unrelated = await asyncio.gather(
        _answer(service.earn(committer, who, _earn("ann", 10), "dup")),
        _answer(service.earn(committer, who, _earn("ann", 10), "dup")),
        _answer(service.earn(committer, who, _earn("ann", 11), "dup")),
        _answer(service.earn(committer, who, _earn("bob", 3), "bob-1")),
    )
    assert tuple(a - b for a, b in zip(_flushes(), before, strict=True)) == (1, 4)
    assert isinstance(first, Posted) and isinstance(same, Posted)
    assert [first.replayed, same.replayed] == [False, True]
    assert same.body == first.body
    assert isinstance(other_body, DomainError) and other_body.code == "idempotency_key_reused"
    assert isinstance(unrelated, Posted) and not unrelated.replayed
    assert (await _balance(engine, who, "ann")).available == 10


async def test_a_failed_call_answers_no_posting_and_commits_none(
    engine: AsyncEngine, pool: asyncpg.Pool
) -> None:
    names = [f"m{i}" for i in range(6)]
    who = await _programme(engine, names, base=1_000)
    committer = GroupCommitter(pool, flushers=1, max_batch=64)
    async with engine.connect() as locker, locker.begin() as held:
        # Hold the budget's rows: the batch's call waits on them, and is then cut off.
        await locker.execute(
            text(
                "SELECT 1 FROM account_balances ab JOIN budgets b ON b.account_id = ab.account_id "
                "AND b.programme_id = ab.programme_id WHERE b.programme_id = :p FOR UPDATE OF ab"
            ),
            {"p": who.programme_id},
        )
        waiting = asyncio.gather(
            *(_answer(service.earn(committer, who, _earn(n, 5), f"cut-{n}")) for n in names),
            return_exceptions=True,
        )
        pid = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            pid = await pool.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%ledger_post_batch%' "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if pid is not None:
                break
        assert pid is not None, "the batch never waited on the lock"
        assert not waiting.done()
        # ::integer: Citus adds a pg_terminate_backend(bigint) for its global process ids.
        await pool.execute("SELECT pg_terminate_backend($1::integer)", pid)
        results = await waiting
        await held.rollback()
    assert len(results) == 6
    for result in results:
        assert isinstance(result, Exception) and not isinstance(result, DomainError), result
    async with engine.connect() as conn:
        written = (
            await conn.execute(
                text("SELECT count(*) FROM transactions WHERE programme_id = :p AND kind = 'earn'"),
                {"p": who.programme_id},
            )
        ).scalar_one()
        keys = (
            await conn.execute(
                text("SELECT count(*) FROM idempotency_keys WHERE programme_id = :p AND key LIKE 'cut-%'"),
                {"p": who.programme_id},
            )
        ).scalar_one()
    assert (written, keys) == (0, 0)
    # The committer goes on with a fresh connection.
    retried = await service.earn(committer, who, _earn(names[0], 5), f"cut-{names[0]}")
    assert not retried.replayed


async def test_a_hot_budget_under_concurrent_batches_stays_consistent(
    engine: AsyncEngine, pool: asyncpg.Pool
) -> None:
    """Several flushers at once on one budget and the same members: every posting answered,
    none lost to a deadlock, and the ledger's invariants hold after."""
    names = [f"m{i}" for i in range(10)]
    who = await _programme(engine, names, base=50_000)
    async with engine.begin() as conn:  # a budget split in shards, as a hot one is
        await service.create_budget(
            conn, who, s.BudgetCreate(code="hot", cap=50_000, unit_cost_micros=1, shards=4), None
        )
    committer = GroupCommitter(pool, flushers=4, max_batch=8)

    async def client(c: int) -> list[Posted | DomainError]:
        out = []
        for i in range(25):
            member = names[(c * 7 + i) % len(names)]
            if i % 5 == 4:
                call = service.spend(committer, who, s.SpendRequest(member_id=member, points=1), f"s{c}-{i}")
            else:
                call = service.earn(committer, who, _earn(member, 3, "hot" if i % 2 else "base"), f"e{c}-{i}")
            out.append(await _answer(call))
        return out

    answers = [a for batch in await asyncio.gather(*(client(c) for c in range(16))) for a in batch]
    refusals = [a for a in answers if isinstance(a, DomainError)]
    assert all(r.code == "insufficient_points" for r in refusals), refusals
    earned = sum(
        3 for a in answers if isinstance(a, Posted) and msgspec.json.decode(a.body)["kind"] == "earn"
    )
    spent = sum(
        1 for a in answers if isinstance(a, Posted) and msgspec.json.decode(a.body)["kind"] == "spend"
    )
    total = 0
    for name in names:
        total += (await _balance(engine, who, name)).available
    assert total == earned - spent
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        assert await verify(conn, who.programme_id) == []


# The same postings in one batch, or one call at a time in the batch's order -------------------

MEMBERS = ("ann", "bob", "cat")
HOLDS = 3
_VOLATILE = {"transaction_id", "hold_id", "created_at", "expires_at", "closed_at", "vests_at"}

op_strategy = st.one_of(
    st.tuples(
        st.just("earn"), st.sampled_from(MEMBERS), st.sampled_from(("big", "small")), st.integers(1, 40)
    ),
    st.tuples(st.just("spend"), st.sampled_from(MEMBERS), st.integers(1, 60)),
    st.tuples(st.just("hold"), st.sampled_from(MEMBERS), st.integers(1, 60)),
    st.tuples(st.just("capture"), st.integers(0, HOLDS - 1), st.one_of(st.none(), st.integers(0, 30))),
    st.tuples(st.just("void"), st.integers(0, HOLDS - 1)),
)
keyed_ops = st.lists(
    st.tuples(op_strategy, st.sampled_from(("k1", "k2", "k3", None))), min_size=2, max_size=20
)


async def _seeded(engine: AsyncEngine) -> tuple[Principal, list[int]]:
    who = await _programme(engine, list(MEMBERS), big=10_000, small=60)
    holds = []
    async with engine.begin() as conn:
        for name in MEMBERS:
            await service.earn(conn, who, _earn(name, 50, "big"), None)
        for i in range(HOLDS):
            posted = await service.hold(conn, who, s.HoldRequest(member_id=MEMBERS[i], points=10), None)
            holds.append(msgspec.json.decode(posted.body)["hold_id"])
    return who, holds


def _call(conn: Any, who: Principal, holds: list[int], op: tuple[Any, ...], key: str | None) -> Any:
    kind = op[0]
    if kind == "earn":
        return service.earn(conn, who, _earn(op[1], op[3], op[2]), key)
    if kind == "spend":
        return service.spend(conn, who, s.SpendRequest(member_id=op[1], points=op[2]), key)
    if kind == "hold":
        return service.hold(conn, who, s.HoldRequest(member_id=op[1], points=op[2]), key)
    if kind == "capture":
        return service.capture(conn, who, holds[op[1]], s.CaptureRequest(points=op[2]), key)
    return service.void(conn, who, holds[op[1]], key)


def _outcome(answer: Posted | DomainError) -> Any:
    if isinstance(answer, DomainError):
        return ("refused", answer.code, {k: v for k, v in answer.extra.items() if k not in _VOLATILE})
    body = msgspec.json.decode(answer.body)
    return ("ok", answer.replayed, {k: v for k, v in body.items() if k not in _VOLATILE})


async def _state(engine: AsyncEngine, who: Principal) -> Any:
    async with engine.connect() as conn:
        balances = [(await service.balance(conn, who, name)) for name in MEMBERS]
        budgets = [(b.code, b.remaining) for b in await service.list_budgets(conn, who)]
    return [(b.available, b.pending, b.held) for b in balances], budgets


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=keyed_ops)
async def test_a_batch_answers_as_its_postings_one_at_a_time(
    engine: AsyncEngine, pool: asyncpg.Pool, ops: list[tuple[tuple[Any, ...], str | None]]
) -> None:
    grouped, grouped_holds = await _seeded(engine)
    single, single_holds = await _seeded(engine)
    committer = GroupCommitter(pool, flushers=1, max_batch=64)
    before = _flushes()
    batched = await asyncio.gather(
        *(_answer(_call(committer, grouped, grouped_holds, op, key)) for op, key in ops)
    )
    assert _flushes()[0] - before[0] == 1, "not one batch"

    # The batch ran its postings in batch_order; the reference runs them in that order too.
    def params(i: int) -> dict[str, Any]:
        op = ops[i][0]
        member = op[1] if op[0] in ("earn", "spend", "hold") else None
        return {
            "p_programme": 0,
            "p_budget": op[2] if op[0] == "earn" else None,
            "p_member": member,
            "p_hold": op[1] if op[0] in ("capture", "void") else None,
        }

    order = sorted(range(len(ops)), key=lambda i: batch_order(f"ledger_{ops[i][0][0]}", params(i)))
    one_by_one: list[Any] = [None] * len(ops)
    async with pool.acquire() as conn:
        for i in order:
            op, key = ops[i]
            one_by_one[i] = await _answer(_call(conn, single, single_holds, op, key))
    assert [_outcome(a) for a in batched] == [_outcome(a) for a in one_by_one]
    assert await _state(engine, grouped) == await _state(engine, single)


async def test_a_posting_waits_for_a_flusher_no_longer_than_for_a_connection(
    engine: AsyncEngine, pool: asyncpg.Pool
) -> None:
    who = await _programme(engine, ["ann", "bob"], base=1_000)
    committer = GroupCommitter(pool, flushers=1, max_batch=64, acquire_timeout=0.3)
    async with engine.connect() as locker, locker.begin() as held:
        await locker.execute(
            text(
                "SELECT 1 FROM account_balances ab JOIN budgets b ON b.account_id = ab.account_id "
                "AND b.programme_id = ab.programme_id WHERE b.programme_id = :p FOR UPDATE OF ab"
            ),
            {"p": who.programme_id},
        )
        stuck = asyncio.ensure_future(service.earn(committer, who, _earn("ann", 5), "first"))
        await asyncio.sleep(0.1)  # the only flusher now waits on the lock with it
        queued = asyncio.ensure_future(service.earn(committer, who, _earn("bob", 5), "second"))
        await asyncio.sleep(0.6)
        assert not stuck.done() and not queued.done()
        await held.rollback()
    assert not (await stuck).replayed  # the call under way commits once the lock is gone
    with pytest.raises(TimeoutError):  # a 503, as when the pool has no connection in time
        await queued
    assert (await _balance(engine, who, "bob")).available == 0


async def test_the_setting_turns_it_off_and_sizes_it(pool: asyncpg.Pool) -> None:
    off = Settings.from_env({"LOYALTY_GROUP_COMMIT": "false"})
    assert off.group_commit is False and for_settings(pool, off) is None
    sized = Settings.from_env({"LOYALTY_GROUP_COMMIT_FLUSHERS": "2", "LOYALTY_GROUP_COMMIT_MAX_BATCH": "16"})
    committer = for_settings(pool, sized)
    assert committer is not None and (committer.flushers, committer.max_batch) == (2, 16)
    assert Settings.from_env(sized.to_env()) == sized


async def test_a_batch_holds_at_most_max_batch_postings_worth_of_subtransactions() -> None:
    """An event with earns weighs more than a posting (see docs/group-commit.md, Batch size): a
    call takes operations up to 2 x max_batch subtransactions, and at least one."""
    committer = GroupCommitter(None, flushers=1, max_batch=4)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    weights = [3, 3, 2, 9, 1, 1]
    for weight in weights:
        committer._queue.append(
            _Op("activity_event_write", {}, loop.create_future(), loop.time(), None, weight)
        )
    taken = []
    while committer._queue:
        taken.append([op.weight for op in committer._take()])
    assert taken == [[3, 3, 2], [9], [1, 1]]
