"""The rollup against direct sums over the ledger: whatever the postings and however the rollup
is cut into runs (a run between any two postings, runs rolled back, a posting that commits
after a run has passed its start), every figure is counted exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import msgspec
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty.db import create_engine
from loyalty.errors import DomainError
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.members import schemas as ms
from loyalty.members import service as members
from loyalty.reports import service, tasks
from loyalty.settings import Settings
from tests.support import make_programme

MEMBERS = ("m0", "m1", "m2")

# Flows, stock and budget burn of one programme, straight from transactions and entries.
DIRECT = """
SELECT
  (SELECT jsonb_build_object(
       'issued', coalesce(sum(amount) FILTER (WHERE kind = 'earn'), 0),
       'issued_micros', coalesce(sum(cost_micros) FILTER (WHERE kind = 'earn'), 0),
       'redeemed', coalesce(-sum(amount) FILTER (WHERE kind IN ('spend', 'capture')), 0),
       'redeemed_micros', coalesce(sum(cost_micros) FILTER (WHERE kind IN ('spend', 'capture')), 0),
       'expired', coalesce(-sum(amount) FILTER (WHERE kind = 'expire'), 0),
       'clawed_back', coalesce(-sum(amount) FILTER (WHERE kind = 'clawback'), 0),
       'clawed_back_micros', coalesce(sum(cost_micros) FILTER (WHERE kind = 'clawback'), 0),
       'adjusted', coalesce(sum(amount) FILTER (WHERE kind = 'adjust'), 0),
       'adjusted_micros', coalesce(sum(cost_micros) FILTER (WHERE kind = 'adjust'), 0))
   FROM transactions WHERE programme_id = :p) AS flows,
  (SELECT jsonb_build_array(coalesce(sum(b.available), 0), coalesce(sum(b.pending), 0), coalesce(sum(b.held), 0))
   FROM account_balances b JOIN accounts a ON a.programme_id = b.programme_id AND a.id = b.account_id
   WHERE a.programme_id = :p AND a.kind = 'member') AS stock,
  (SELECT jsonb_object_agg(code, jsonb_build_array(cap, cap - remaining)) FROM (
       SELECT b.code, b.cap, (SELECT sum(available) FROM account_balances x
                              WHERE x.programme_id = b.programme_id AND x.account_id = b.account_id) AS remaining
       FROM budgets b WHERE b.programme_id = :p) q) AS budgets
"""


async def direct(engine: AsyncEngine, programme_id: int) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(text(DIRECT), {"p": programme_id})).one()
    return {"flows": row.flows, "stock": row.stock, "budgets": row.budgets}


async def from_rollup(engine: AsyncEngine, programme_id: int) -> dict[str, Any]:
    async with engine.connect() as conn:
        flows = await service.daily_flows(conn, programme_id)
        stock = await service.stock(conn, programme_id)
        burn = await service.budget_burn(conn, programme_id)
    t = flows.totals
    return {
        "flows": {
            "issued": t.issued_points,
            "issued_micros": t.issued_micros,
            "redeemed": t.redeemed_points,
            "redeemed_micros": t.redeemed_micros,
            "expired": t.expired_points,
            "clawed_back": t.clawed_back_points,
            "clawed_back_micros": t.clawed_back_micros,
            "adjusted": t.adjusted_points,
            "adjusted_micros": t.adjusted_micros,
        },
        "stock": [stock.available, stock.pending, stock.held],
        "budgets": {b.code: [b.cap, b.issued] for b in burn.budgets},
    }


async def rollup_now(engine: AsyncEngine) -> None:
    await tasks.rollup(engine, margin_seconds=0)


async def setup(engine: AsyncEngine) -> Principal:
    programme = await make_programme(engine, clawback_policy="negative")
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=0)
    async with engine.begin() as conn:
        for m in MEMBERS:
            await members.enrol(conn, who, ms.MemberCreate(member_id=m), None)
        await ledger.create_budget(
            conn, who, ls.BudgetCreate(code="main", cap=100_000, unit_cost_micros=700), None
        )
    return who


async def apply(conn: AsyncConnection, who: Principal, op: tuple[str, int, int], holds: list[int]) -> None:
    kind, m, points = op
    member = MEMBERS[m]
    if kind == "earn":
        req = ls.EarnRequest(member_id=member, budget="main", points=points, reference=f"r{points % 3}")
        await ledger.earn(conn, who, req, None)
    elif kind == "pending":
        req = ls.EarnRequest(member_id=member, budget="main", points=points, pending_days=3)
        await ledger.earn(conn, who, req, None)
    elif kind == "spend":
        await ledger.spend(conn, who, ls.SpendRequest(member_id=member, points=points), None)
    elif kind == "hold":
        posted = await ledger.hold(conn, who, ls.HoldRequest(member_id=member, points=points), None)
        holds.append(msgspec.json.decode(posted.body)["hold_id"])
    elif kind == "capture" and holds:
        await ledger.capture(
            conn, who, holds.pop(), ls.CaptureRequest(points=None if points % 2 else 1), None
        )
    elif kind == "void" and holds:
        await ledger.void(conn, who, holds.pop(0), None)
    elif kind == "clawback":
        await ledger.clawback(
            conn, who, ls.ClawbackRequest(member_id=member, reference=f"r{points % 3}"), None
        )
    elif kind == "adjust":
        req = ls.AdjustRequest(
            member_id=member, points=points if m else -points, reason="test", unit_cost_micros=3
        )
        await ledger.adjust(conn, who, req, None)
    elif kind == "expire":
        await conn.execute(
            text(
                "UPDATE lots SET expires_at = now() - interval '1 second' "
                "WHERE programme_id = :p AND remaining > 0 AND id = (SELECT min(id) FROM lots "
                "WHERE programme_id = :p AND remaining > 0)"
            ),
            {"p": who.programme_id},
        )
        await conn.execute(text("SELECT ledger_expire_due(500)"))


KINDS = ("earn", "earn", "pending", "spend", "hold", "capture", "void", "clawback", "adjust", "expire")
OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(KINDS), st.integers(0, len(MEMBERS) - 1), st.integers(1, 400)),
        st.just(("rollup", 0, 0)),
        st.just(("rollup_rolled_back", 0, 0)),
    ),
    min_size=1,
    max_size=14,
)


async def scenario(engine: AsyncEngine, ops: list[tuple[str, int, int]]) -> None:
    who = await setup(engine)
    holds: list[int] = []
    for op in ops:
        if op[0] == "rollup":
            await rollup_now(engine)
        elif op[0] == "rollup_rolled_back":
            # A run that dies before its commit: nothing of it may stay.
            async with engine.connect() as conn:
                await conn.begin()
                await service.rollup_step(conn, margin_seconds=0)
                await conn.rollback()
        else:
            try:
                async with engine.begin() as conn:
                    await apply(conn, who, op, holds)
            except DomainError:
                pass  # insufficient points and the like: nothing was written
    await rollup_now(engine)
    assert await from_rollup(engine, who.programme_id) == await direct(engine, who.programme_id)


def test_rollup_in_any_increments_equals_the_direct_sums(settings: Settings) -> None:
    assert settings.database_url is not None
    loop = asyncio.new_event_loop()
    engine = create_engine(settings.database_url, pool_size=2)

    @given(ops=OPS)
    @hyp_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(ops: list[tuple[str, int, int]]) -> None:
        loop.run_until_complete(scenario(engine, ops))

    try:
        check()
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()


async def test_a_posting_that_commits_after_a_run_is_still_counted(engine: AsyncEngine) -> None:
    """The run between its start and its commit must neither count it nor move past it."""
    who = await setup(engine)
    async with engine.connect() as late:
        await late.begin()
        # The transaction starts now, and writes its row only after the run below.
        await late.execute(text("SELECT 1"))
        await rollup_now(engine)
        req = ls.EarnRequest(member_id="m0", budget="main", points=123)
        await ledger.earn(late, who, req, None)
        await rollup_now(engine)  # the row is there but not committed
        async with engine.connect() as conn:
            assert (await service.daily_flows(conn, who.programme_id)).totals.issued_points == 0
        await late.commit()
    await rollup_now(engine)
    rolled = await from_rollup(engine, who.programme_id)
    assert rolled["flows"]["issued"] == 123
    assert rolled == await direct(engine, who.programme_id)


async def test_enrolments_and_events_make_new_and_active_members(engine: AsyncEngine) -> None:
    who = await setup(engine)
    async with engine.begin() as conn:
        # An event alone makes a member active that day (no transaction needed).
        member = (
            await conn.execute(
                text("SELECT id FROM members WHERE programme_id = :p AND external_id = 'm1'"),
                {"p": who.programme_id},
            )
        ).scalar_one()
        await conn.execute(
            text(
                "INSERT INTO member_events (programme_id, member_id, event_id, type, occurred_at) "
                "VALUES (:p, :m, :e, 'check_in', now() - interval '3 days')"
            ),
            {"p": who.programme_id, "m": member, "e": uuid.uuid4().hex},
        )
        await ledger.earn(conn, who, ls.EarnRequest(member_id="m2", budget="main", points=5), None)
        await ledger.earn(conn, who, ls.EarnRequest(member_id="m2", budget="main", points=6), None)
    await rollup_now(engine)
    await rollup_now(engine)
    async with engine.connect() as conn:
        activity = await service.new_and_active_members(conn, who.programme_id)
    today = activity.days[-1]
    assert (today.new_members, today.active_members, today.total_members) == (3, 2, 3)
    assert json.loads(msgspec.json.encode(activity))["days"][-1]["active_members"] == 2
