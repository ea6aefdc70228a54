"""Many transactions at once on the same hot rows: no double spend, no over-issue, no deadlock.

Each operation runs in its own connection and transaction, as a request would, launched
together with asyncio.gather on an engine with a pool large enough that they really overlap.
Each test has its own programme.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty.db import create_engine
from loyalty.errors import DomainError
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as s
from loyalty.ledger import service
from loyalty.ledger.repository import Posted
from loyalty.ledger.verify import verify
from loyalty.members import schemas as ms
from loyalty.members import service as members
from loyalty.settings import Settings
from tests.support import make_programme

T = TypeVar("T")
N = 64


@pytest.fixture(scope="module")
async def wide_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine whose pool lets N transactions run at the same time."""
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=N + 6, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _programme(engine: AsyncEngine, names: list[str], **budgets: dict[str, Any]) -> Principal:
    programme = await make_programme(engine)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=0)
    async with engine.begin() as conn:
        for name in names:
            await members.enrol(conn, who, ms.MemberCreate(member_id=name), None)
        for code, spec in budgets.items():
            await service.create_budget(
                conn, who, s.BudgetCreate(code=code, unit_cost_micros=1, **spec), None
            )
    return who


async def _in_tx(engine: AsyncEngine, op: Callable[[AsyncConnection], Awaitable[T]]) -> T | DomainError:
    """One request: its own transaction; a domain refusal is an answer, anything else fails the test."""
    try:
        async with engine.begin() as conn:
            return await op(conn)
    except DomainError as exc:
        return exc


async def _all(
    engine: AsyncEngine, ops: list[Callable[[AsyncConnection], Awaitable[T]]]
) -> list[T | DomainError]:
    return await asyncio.gather(*(_in_tx(engine, op) for op in ops))


def _codes(results: list[Any]) -> Counter[str]:
    return Counter(r.code if isinstance(r, DomainError) else "ok" for r in results)


async def _balance(engine: AsyncEngine, who: Principal, member: str) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        b = await service.balance(conn, who, member)
    return b.available, b.pending, b.held


async def _remaining(engine: AsyncEngine, who: Principal, budget: str) -> tuple[int, int]:
    async with engine.connect() as conn:
        view = await service.get_budget(conn, who, budget)
    return view.cap, view.remaining


async def _clean(engine: AsyncEngine, who: Principal) -> None:
    async with engine.connect() as conn:
        violations = await verify(conn, who.programme_id)
    assert violations == [], "\n".join(map(str, violations))


async def _earn(
    engine: AsyncEngine, who: Principal, member: str, points: int, reference: str | None = None
) -> None:
    async with engine.begin() as conn:
        await service.earn(
            conn,
            who,
            s.EarnRequest(member_id=member, budget="main", points=points, reference=reference),
            None,
        )


def _spend(
    who: Principal, member: str, points: int, key: str | None = None
) -> Callable[[AsyncConnection], Awaitable[Posted]]:
    return lambda conn: service.spend(conn, who, s.SpendRequest(member_id=member, points=points), key)


async def test_spends_on_one_member_never_overdraw(engine: AsyncEngine, wide_engine: AsyncEngine) -> None:
    who = await _programme(engine, ["ann"], main={"cap": 10_000})
    k, amount = 20, 7
    await _earn(engine, who, "ann", k * amount + 3)

    results = await _all(wide_engine, [_spend(who, "ann", amount) for _ in range(N)])

    assert _codes(results) == {"ok": k, "insufficient_points": N - k}
    assert await _balance(engine, who, "ann") == (3, 0, 0)
    await _clean(engine, who)


async def test_earns_on_one_budget_never_exceed_its_cap(
    engine: AsyncEngine, wide_engine: AsyncEngine
) -> None:
    k, amount = 24, 10
    names = [f"m{i}" for i in range(8)]
    who = await _programme(engine, names, main={"cap": k * amount, "shards": 16})

    def earn(i: int) -> Callable[[AsyncConnection], Awaitable[Posted]]:
        req = s.EarnRequest(member_id=names[i % len(names)], budget="main", points=amount)
        return lambda conn: service.earn(conn, who, req, None)

    results = await _all(wide_engine, [earn(i) for i in range(N)])

    assert _codes(results) == {"ok": k, "budget_exhausted": N - k}
    assert await _remaining(engine, who, "main") == (k * amount, 0)
    await _clean(engine, who)


async def test_partial_earns_issue_exactly_what_remains(
    engine: AsyncEngine, wide_engine: AsyncEngine
) -> None:
    cap, amount = 235, 10
    names = [f"m{i}" for i in range(8)]
    who = await _programme(engine, names, main={"cap": cap, "shards": 16})

    def earn(i: int) -> Callable[[AsyncConnection], Awaitable[Posted]]:
        req = s.EarnRequest(member_id=names[i % len(names)], budget="main", points=amount, allow_partial=True)
        return lambda conn: service.earn(conn, who, req, None)

    results = await _all(wide_engine, [earn(i) for i in range(N)])

    issued = [msgspec.json.decode(r.body)["amount"] for r in results if isinstance(r, Posted)]
    assert sum(issued) == cap
    assert sorted(issued)[0] == cap % amount and len(issued) == cap // amount + 1
    assert _codes(results)["budget_exhausted"] == N - len(issued)
    assert await _remaining(engine, who, "main") == (cap, 0)
    await _clean(engine, who)


@pytest.mark.parametrize("operation", ["earn", "spend"])
async def test_one_idempotency_key_one_effect(
    engine: AsyncEngine, wide_engine: AsyncEngine, operation: str
) -> None:
    who = await _programme(engine, ["ann"], main={"cap": 10_000})
    await _earn(engine, who, "ann", 500)
    key = uuid.uuid4().hex
    if operation == "earn":
        req = s.EarnRequest(member_id="ann", budget="main", points=40, reference="order-1")
        op: Callable[[AsyncConnection], Awaitable[Posted]] = lambda conn: service.earn(conn, who, req, key)  # noqa: E731
        expected = (540, 0, 0)
    else:
        op = _spend(who, "ann", 40, key)
        expected = (460, 0, 0)

    results = await _all(wide_engine, [op] * N)

    assert all(isinstance(r, Posted) for r in results), _codes(results)
    posted = [r for r in results if isinstance(r, Posted)]
    assert sum(not p.replayed for p in posted) == 1
    assert len({p.body for p in posted}) == 1
    assert await _balance(engine, who, "ann") == expected
    await _clean(engine, who)


async def test_holds_captures_and_spends_never_double_spend(
    engine: AsyncEngine, wide_engine: AsyncEngine
) -> None:
    who = await _programme(engine, ["ann"], main={"cap": 10_000})
    start = 1_000
    await _earn(engine, who, "ann", start)
    rng = random.Random(7)

    def hold(points: int) -> Callable[[AsyncConnection], Awaitable[Posted]]:
        return lambda conn: service.hold(conn, who, s.HoldRequest(member_id="ann", points=points), None)

    first = await _all(wide_engine, [hold(30) if i % 2 else _spend(who, "ann", 30) for i in range(N)])
    codes = _codes(first)
    assert codes["ok"] == start // 30 and codes["insufficient_points"] == N - start // 30
    holds = [
        msgspec.json.decode(r.body)["hold_id"] for i, r in enumerate(first) if i % 2 and isinstance(r, Posted)
    ]
    spent = 30 * sum(1 for i, r in enumerate(first) if not i % 2 and isinstance(r, Posted))

    captures = {h: rng.randint(0, 30) for h in holds}

    def capture(hold_id: int) -> Callable[[AsyncConnection], Awaitable[Posted]]:
        return lambda conn: service.capture(
            conn, who, hold_id, s.CaptureRequest(points=captures[hold_id]), None
        )

    # Captures, second captures of the same holds, and spends of whatever comes back.
    ops = (
        [capture(h) for h in holds] + [capture(h) for h in holds] + [_spend(who, "ann", 5) for _ in range(N)]
    )
    second = await _all(wide_engine, ops)
    codes = _codes(second[: 2 * len(holds)])
    assert codes == {"ok": len(holds), "hold_not_open": len(holds)}
    spent += 5 * sum(1 for r in second[2 * len(holds) :] if isinstance(r, Posted))

    available, pending, held = await _balance(engine, who, "ann")
    assert (pending, held) == (0, 0)
    assert available == start - spent - sum(captures.values()) >= 0
    await _clean(engine, who)


async def _storm(engine: AsyncEngine, wide_engine: AsyncEngine, operations: int, seed: int) -> Counter[str]:
    names = [f"m{i}" for i in range(6)]
    who = await _programme(
        engine, names, main={"cap": 10**9, "shards": 16}, small={"cap": 5_000, "shards": 4}
    )
    for name in names:
        await _earn(engine, who, name, 500, reference=f"{name}-r0")
    rng = random.Random(seed)
    holds: list[int] = []
    outcome: Counter[str] = Counter()

    def pick() -> Callable[[AsyncConnection], Awaitable[Posted]]:
        m = rng.choice(names[:3]) if rng.random() < 0.7 else rng.choice(names)  # a few hot members
        n = rng.randint(1, 80)
        kind = rng.choice(
            ["earn", "earn", "spend", "spend", "clawback", "transfer", "hold", "capture", "void"]
        )
        outcome[kind] += 1
        if kind == "earn":
            req = s.EarnRequest(
                member_id=m, budget=rng.choice(["main", "main", "small"]), points=n,
                reference=f"{m}-r{rng.randint(0, 3)}", allow_partial=rng.random() < 0.3,
            )  # fmt: skip
            return lambda conn: service.earn(conn, who, req, None)
        if kind == "spend":
            return _spend(who, m, n)
        if kind == "clawback":
            claw = s.ClawbackRequest(
                member_id=m, reference=f"{m}-r{rng.randint(0, 3)}", points=rng.choice([None, n])
            )
            return lambda conn: service.clawback(conn, who, claw, None)
        if kind == "transfer":
            other = rng.choice([x for x in names if x != m])
            a, b = (m, other) if rng.random() < 0.5 else (other, m)  # both directions between the same pair
            tr = s.TransferRequest(from_member_id=a, to_member_id=b, points=n)
            return lambda conn: service.transfer(conn, who, tr, None)
        if kind == "hold" or not holds:
            hr = s.HoldRequest(member_id=m, points=n)

            async def hold(conn: AsyncConnection) -> Posted:
                posted = await service.hold(conn, who, hr, None)
                holds.append(msgspec.json.decode(posted.body)["hold_id"])
                return posted

            return hold
        hold_id = rng.choice(holds)
        if kind == "capture":
            cr = s.CaptureRequest(points=rng.choice([None, rng.randint(0, n)]))
            return lambda conn: service.capture(conn, who, hold_id, cr, None)
        return lambda conn: service.void(conn, who, hold_id, None)

    done = 0
    while done < operations:
        batch = [pick() for _ in range(min(N, operations - done))]
        results = await _all(wide_engine, batch)
        for r in results:
            outcome["ok" if isinstance(r, Posted) else r.code] += 1
        done += len(batch)
    await _clean(engine, who)
    async with engine.connect() as conn:
        open_holds = (
            await conn.execute(
                text("SELECT count(*) FROM holds WHERE programme_id = :p AND status = 'open'"),
                {"p": who.programme_id},
            )
        ).scalar_one()
    assert open_holds <= len(holds)
    return outcome


async def test_mixed_storm_without_deadlocks(engine: AsyncEngine, wide_engine: AsyncEngine) -> None:
    outcome = await _storm(engine, wide_engine, 640, seed=1)
    # Every kind of request both succeeded and was refused somewhere in the storm.
    assert outcome["ok"] > 200 and outcome["insufficient_points"] > 0


@pytest.mark.stress
async def test_mixed_storm_long(engine: AsyncEngine, wide_engine: AsyncEngine) -> None:
    for seed in range(4):
        await _storm(engine, wide_engine, 5_000, seed=seed)
