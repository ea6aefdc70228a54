"""The worker's ledger jobs, called as arq calls them."""

from __future__ import annotations

from sqlalchemy import text

from loyalty.ledger import tasks
from tests.support import make_programme


async def test_purge_forgets_only_old_idempotency_keys(engine) -> None:
    programme = await make_programme(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (programme_id, key, fingerprint, created_at) VALUES "
                "(:p, 'old', '\\x00', now() - interval '31 days'), (:p, 'new', '\\x00', now() - interval '29 days')"
            ),
            {"p": programme.id},
        )
    await tasks.purge_idempotency_keys({"engine": engine})
    async with engine.connect() as conn:
        keys = (
            (
                await conn.execute(
                    text("SELECT key FROM idempotency_keys WHERE programme_id = :p"), {"p": programme.id}
                )
            )
            .scalars()
            .all()
        )
    assert keys == ["new"]


async def test_jobs_void_timed_out_holds_vest_pending_points_and_expire_lots(engine) -> None:
    from loyalty.http.principal import Principal
    from loyalty.ledger import schemas as s
    from loyalty.ledger import service
    from loyalty.members import schemas as ms
    from loyalty.members import service as members

    programme = await make_programme(engine)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=0)
    async with engine.begin() as conn:
        await service.create_budget(conn, who, s.BudgetCreate(code="b", cap=10_000, unit_cost_micros=1), "k0")
        for name in ("a", "b", "c"):
            await members.enrol(conn, who, ms.MemberCreate(member_id=name), f"e-{name}")
        await service.earn(conn, who, s.EarnRequest(member_id="a", budget="b", points=100), "k1")
        await service.hold(conn, who, s.HoldRequest(member_id="a", points=60), "k2")
        await service.earn(
            conn, who, s.EarnRequest(member_id="b", budget="b", points=70, pending_days=14), "k3"
        )
        await service.earn(
            conn, who, s.EarnRequest(member_id="c", budget="b", points=40, expiry=s.ExpiryIn(days=30)), "k4"
        )
        # Time passes: the hold's timeout, the return window and the expiry are all behind us.
        await conn.execute(
            text("UPDATE holds SET expires_at = now() - interval '1 s' WHERE programme_id = :p"),
            {"p": programme.id},
        )
        await conn.execute(
            text("UPDATE lots SET vests_at = now() - interval '1 s' WHERE programme_id = :p AND NOT vested"),
            {"p": programme.id},
        )
        await conn.execute(
            text(
                "UPDATE lots SET expires_at = now() - interval '1 s' WHERE programme_id = :p "
                "AND expires_at IS NOT NULL"
            ),
            {"p": programme.id},
        )
    ctx = {"engine": engine}
    assert await tasks.expire_holds(ctx) >= 1
    assert await tasks.vest_points(ctx) >= 1
    assert await tasks.expire_points(ctx) >= 1
    async with engine.connect() as conn:
        a = await service.balance(conn, who, "a")
        b = await service.balance(conn, who, "b")
        c = await service.balance(conn, who, "c")
    assert (a.available, a.held) == (100, 0)
    assert (b.available, b.pending) == (70, 0)
    assert c.available == 0
