"""benefit_consume on the posting pool, each call its own transaction (autocommit), as
their fast routes make it: N concurrent uses of a quota of K -> exactly K succeed, and one order
sent N times at once is one use."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.benefits import repository, service
from loyalty.benefits import schemas as s
from loyalty.db import create_posting_pool
from loyalty.errors import Conflict
from loyalty.http.principal import Principal
from loyalty.members.schemas import MemberCreate
from loyalty.members.service import enrol
from tests.conftest import citus_run
from tests.support import make_programme, new_key

NAMES = {"en": "Returns", "zh-CN": "免费退货"}


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_posting_pool(database_url, size=32)
    try:
        yield pool
    finally:
        await pool.close()


async def _setup(engine: AsyncEngine, limit: int) -> Principal:
    programme = await make_programme(engine)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=1)
    async with engine.begin() as conn:
        await enrol(conn, who, MemberCreate(member_id="m1"), new_key())
        await service.create(
            conn,
            who,
            s.BenefitCreate(code="q", type="quota", names=NAMES, params={"limit": limit, "period": "day"}),
        )
        await service.grant(conn, who, "m1", s.GrantCreate(benefit="q", reason="test"))
    return who


async def _use(pool: asyncpg.Pool, who: Principal, order: str, *, reserve: bool) -> bool:
    request = (
        s.ReserveRequest(member_id="m1", order_reference=order)
        if reserve
        else s.ConsumeRequest(member_id="m1", order_reference=order)
    )
    async with pool.acquire() as conn:
        try:
            await service.consume_with(
                functools.partial(repository.consume_pooled, conn), who, "q", request, reserve=reserve
            )
        except Conflict:
            return False
    return True


@pytest.mark.parametrize("limit", [1, 5, 17])
async def test_64_concurrent_pooled_uses_of_a_quota_of_k(
    engine: AsyncEngine, pool: asyncpg.Pool, limit: int
) -> None:
    who = await _setup(engine, limit)
    results = await asyncio.gather(*(_use(pool, who, f"o{i}", reserve=i % 3 == 0) for i in range(64)))

    assert sum(results) == limit
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT used, reserved FROM benefit_usage WHERE programme_id = :p"),
                {"p": who.programme_id},
            )
        ).one()
        states = dict(
            (
                await conn.execute(
                    text(
                        "SELECT state, count(*) FROM benefit_consumptions WHERE programme_id = :p GROUP BY state"
                    ),
                    {"p": who.programme_id},
                )
            ).all()
        )
        events = await conn.scalar(
            text("SELECT count(*) FROM domain_events WHERE programme_id = :p AND type = 'benefit.consumed'"),
            {"p": who.programme_id},
        )
    assert row.used + row.reserved == limit
    assert (states.get("committed", 0), states.get("reserved", 0)) == (row.used, row.reserved)
    # On Citus the event is written only when an endpoint wants it (there is none here).
    assert events == (0 if citus_run() else row.used)


async def test_one_order_sent_at_once_is_one_use(engine: AsyncEngine, pool: asyncpg.Pool) -> None:
    who = await _setup(engine, 10)
    results = await asyncio.gather(*(_use(pool, who, "same", reserve=False) for _ in range(16)))

    assert all(results)
    async with engine.connect() as conn:
        used = await conn.scalar(
            text("SELECT used FROM benefit_usage WHERE programme_id = :p"), {"p": who.programme_id}
        )
    assert used == 1
