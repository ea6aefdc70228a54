"""Quota and revocation under concurrency: 64 consumes of a quota of k -> exactly k succeed;
a revocation waits for a consumption holding the grant, and nothing is consumed after it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.benefits import schemas as s
from loyalty.benefits import service
from loyalty.db import create_engine
from loyalty.errors import Conflict
from loyalty.http.principal import Principal
from loyalty.members.schemas import MemberCreate
from loyalty.members.service import enrol
from tests.conftest import citus_run
from tests.support import make_programme, new_key

NAMES = {"en": "Returns", "zh-CN": "免费退货"}


@pytest.fixture
async def wide(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=32)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _setup(engine: AsyncEngine, limit: int) -> tuple[Principal, int]:
    programme = await make_programme(engine)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=1)
    async with engine.begin() as conn:
        await enrol(conn, who, MemberCreate(member_id="m1"), new_key())
        await service.create(
            conn,
            who,
            s.BenefitCreate(code="q", type="quota", names=NAMES, params={"limit": limit, "period": "day"}),
        )
        granted = await service.grant(conn, who, "m1", s.GrantCreate(benefit="q", reason="test"))
    return who, granted.id


async def _consume(engine: AsyncEngine, who: Principal, order: str) -> bool:
    try:
        async with engine.begin() as conn:
            await service.consume(
                conn, who, "q", s.ConsumeRequest(member_id="m1", order_reference=order), reserve=False
            )
    except Conflict:
        return False
    return True


@pytest.mark.parametrize("limit", [1, 5, 17])
async def test_64_concurrent_consumes_of_a_quota_of_k(wide: AsyncEngine, limit: int) -> None:
    who, _ = await _setup(wide, limit)
    results = await asyncio.gather(*(_consume(wide, who, f"o{i}") for i in range(64)))

    assert sum(results) == limit
    async with wide.connect() as conn:
        used = await conn.scalar(
            text("SELECT used FROM benefit_usage WHERE programme_id = :p"), {"p": who.programme_id}
        )
        committed = await conn.scalar(
            text("SELECT count(*) FROM benefit_consumptions WHERE programme_id = :p AND state = 'committed'"),
            {"p": who.programme_id},
        )
    assert used == committed == limit


async def test_same_order_concurrently_is_one_use(wide: AsyncEngine) -> None:
    who, _ = await _setup(wide, 10)
    results = await asyncio.gather(*(_consume(wide, who, "same") for _ in range(16)))

    assert all(results)
    async with wide.connect() as conn:
        used = await conn.scalar(
            text("SELECT used FROM benefit_usage WHERE programme_id = :p"), {"p": who.programme_id}
        )
    assert used == 1


async def _revocation_waits_for_consumption(wide: AsyncEngine, who: Principal, grant_id: int) -> None:
    """A consumption of "q" open in one transaction holds the grant FOR SHARE: the revocation
    cannot pass it, and wins once it has committed (the next consumption is refused)."""
    async with wide.connect() as a:
        tx = await a.begin()
        await service.consume(
            a, who, "q", s.ConsumeRequest(member_id="m1", order_reference="a"), reserve=False
        )
        async with wide.connect() as b:
            await b.begin()
            if citus_run():  # the lock is waited for on the member's worker
                await b.execute(text("SET LOCAL citus.propagate_set_commands = 'local'"))
            await b.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(DBAPIError, match="lock timeout"):
                await service.revoke(b, who, "m1", grant_id, s.RevokeRequest(reason="fraud"))
        await tx.commit()
    async with wide.begin() as b:
        await service.revoke(b, who, "m1", grant_id, s.RevokeRequest(reason="fraud"))
    assert not await _consume(wide, who, "after")


async def test_revocation_waits_for_an_open_consumption_and_wins_after(wide: AsyncEngine) -> None:
    who, grant_id = await _setup(wide, 100)
    await _revocation_waits_for_consumption(wide, who, grant_id)


async def test_consumes_racing_a_revocation_never_pass_it(wide: AsyncEngine) -> None:
    who, grant_id = await _setup(wide, 100_000)
    revoked = asyncio.Event()
    consumed = asyncio.Event()
    before_revoke: list[bool] = []
    after_revoke: list[bool] = []

    async def revoke() -> None:
        await consumed.wait()  # revoke in the middle of a stream of consumptions
        await asyncio.sleep(0.05)
        async with wide.begin() as conn:
            await service.revoke(conn, who, "m1", grant_id, s.RevokeRequest(reason="fraud"))
        revoked.set()

    async def consumer(worker: int) -> None:
        for i in range(10_000):
            started_after = revoked.is_set()
            ok = await _consume(wide, who, f"w{worker}-{i}")
            (after_revoke if started_after else before_revoke).append(ok)
            if ok:
                consumed.set()
            if len(after_revoke) >= 64:
                return

    await asyncio.wait_for(asyncio.gather(revoke(), *(consumer(w) for w in range(16))), timeout=60)

    assert any(before_revoke), "nothing was consumed before the revocation"
    assert len(after_revoke) >= 64
    assert not any(after_revoke), "a consumption that started after the revocation committed succeeded"


async def test_revoking_an_upgrade_waits_for_a_consumption_relying_on_it(wide: AsyncEngine) -> None:
    """A quota the member has only through an upgrade grant: the consumption locks that grant
    as it locks the benefit's own, so its revocation waits, and nothing is consumed after it."""
    programme = await make_programme(wide)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=1)
    ladder = {"tiers": [{"code": "base", "rank": 0}, {"code": "gold", "rank": 1}]}
    async with wide.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO tier_ladder_versions (programme_id, version, status, definition, effective_at) "
                "VALUES (:p, 1, 'published', CAST(:d AS jsonb), now() - interval '1 minute')"
            ),
            {"p": programme.id, "d": json.dumps(ladder)},
        )
        await enrol(conn, who, MemberCreate(member_id="m1"), new_key())
        await service.create(
            conn,
            who,
            s.BenefitCreate(code="q", type="quota", names=NAMES, params={"limit": 100, "period": "day"}),
        )
        await service.create(
            conn, who, s.BenefitCreate(code="to-gold", type="upgrade", names=NAMES, params={"tier": "gold"})
        )
        await service.set_tier_benefits(
            conn, who, "gold", s.TierBenefitsSet(benefits=[s.TierBenefitItem(benefit="q")])
        )
        grant_id = (await service.grant(conn, who, "m1", s.GrantCreate(benefit="to-gold", reason="test"))).id

    await _revocation_waits_for_consumption(wide, who, grant_id)
