"""verify() is clean on a busy programme and names each kind of corruption made by hand.

Corruptions are made and checked inside a transaction that is rolled back, so no other test
(nor a later `verify` over all programmes) ever sees them; only the CLI test commits one, and
repairs it before it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty.http.principal import Principal
from loyalty.ledger import repository, service
from loyalty.ledger import schemas as s
from loyalty.ledger.verify import CHECKS, run_cli, verify
from loyalty.members import schemas as ms
from loyalty.members import service as members
from loyalty.settings import Settings
from tests.support import Programme, make_programme


def _key() -> str:
    return uuid.uuid4().hex


def _principal(programme: Programme) -> Principal:
    return Principal(programme_id=programme.id, programme_code=programme.code, role="ecommerce", key_id=0)


async def _busy_programme(engine: AsyncEngine, *, clawback_policy: str = "negative") -> Programme:
    """A programme where every kind of posting has happened at least once."""
    programme = await make_programme(engine, clawback_policy=clawback_policy)
    who = _principal(programme)
    past = datetime.now(UTC) - timedelta(days=1)
    async with engine.begin() as conn:
        for m in ("ann", "bob", "cat"):
            await members.enrol(conn, who, ms.MemberCreate(member_id=m), _key())
        await service.create_budget(
            conn, who, s.BudgetCreate(code="main", cap=10_000, unit_cost_micros=10_000, shards=4), _key()
        )
        await service.create_budget(
            conn,
            who,
            s.BudgetCreate(code="capped", cap=500, unit_cost_micros=5_000, per_member_cap=200, shards=2),
            _key(),
        )
        await service.top_up_budget(conn, who, "main", s.BudgetTopUp(points=1_000), _key())
        await service.create_budget(
            conn, who, s.BudgetCreate(code="spare", cap=300, unit_cost_micros=1), _key()
        )
        await service.move_budget(
            conn, who, s.BudgetMove(from_budget="spare", to_budget="main", points=100), _key()
        )
        await service.close_budget(conn, who, "spare", _key())
        for m, points in (("ann", 1_000), ("bob", 600), ("cat", 300)):
            await service.earn(
                conn,
                who,
                s.EarnRequest(
                    member_id=m, budget="main", points=points, reference=f"o-{m}", expiry=s.ExpiryIn(days=30)
                ),
                _key(),
            )
        await service.earn(
            conn, who, s.EarnRequest(member_id="ann", budget="capped", points=300, allow_partial=True), _key()
        )
        await service.earn(
            conn, who, s.EarnRequest(member_id="bob", budget="main", points=50, pending_days=14), _key()
        )
        await repository.post(
            conn, "ledger_earn", p_programme=programme.id, p_key=None, p_fingerprint=b"x", p_member="cat",
            p_budget="main", p_amount=40, p_partial=False, p_reference="old", p_reason=None, p_vests_at=None,
            p_expires_at=past, p_metadata=None, p_actor="test",
        )  # fmt: skip
        await repository.run_job(conn, "ledger_expire_due", 10_000)
        await service.spend(conn, who, s.SpendRequest(member_id="ann", points=120), _key())
        held = await service.hold(conn, who, s.HoldRequest(member_id="ann", points=200), _key())
        await service.capture(conn, who, _hold_id(held.body), s.CaptureRequest(points=150), _key())
        held = await service.hold(conn, who, s.HoldRequest(member_id="bob", points=100), _key())
        await service.void(conn, who, _hold_id(held.body), _key())
        await service.hold(conn, who, s.HoldRequest(member_id="cat", points=50), _key())  # stays open
        held = await service.hold(conn, who, s.HoldRequest(member_id="cat", points=20), _key())
        await conn.execute(
            text(
                "UPDATE holds SET expires_at = now() - interval '1 second' WHERE programme_id = :p AND id = :h"
            ),
            {"p": programme.id, "h": _hold_id(held.body)},
        )
        await repository.run_job(conn, "ledger_expire_holds", 10_000)
        await service.transfer(
            conn, who, s.TransferRequest(from_member_id="ann", to_member_id="bob", points=70), _key()
        )
        await service.adjust(
            conn, who, s.AdjustRequest(member_id="cat", points=25, reason="goodwill"), _key()
        )
        await service.adjust(conn, who, s.AdjustRequest(member_id="bob", points=-5, reason="fix"), _key())
        await service.spend(conn, who, s.SpendRequest(member_id="bob", points=500), _key())
        await service.clawback(
            conn, who, s.ClawbackRequest(member_id="bob", reference="o-bob", points=300), _key()
        )
        await conn.execute(
            text(
                "UPDATE lots SET vests_at = now() - interval '1 second' WHERE programme_id = :p AND NOT vested"
            ),
            {"p": programme.id},
        )
        await repository.run_job(conn, "ledger_vest_due", 10_000)
    return programme


def _hold_id(body: bytes) -> int:
    import msgspec

    return int(msgspec.json.decode(body)["hold_id"])


async def _ids(conn: AsyncConnection, programme: Programme, member: str) -> tuple[int, int]:
    ids = await repository.member_ids(conn, programme.id, member)
    assert ids is not None
    return ids


async def _corrupted(
    engine: AsyncEngine, programme: Programme, corrupt: Callable[[AsyncConnection], Awaitable[None]]
) -> set[str]:
    """The checks that fail after `corrupt`, seen inside a transaction that is then rolled back."""
    async with engine.connect() as conn:
        tx = await conn.begin()
        try:
            assert await verify(conn, programme.id) == []
            await corrupt(conn)
            return {v.check for v in await verify(conn, programme.id)}
        finally:
            await tx.rollback()


@pytest.fixture(scope="module")
async def busy(engine: AsyncEngine) -> Programme:
    return await _busy_programme(engine)


async def test_clean_on_a_busy_programme(engine: AsyncEngine, busy: Programme) -> None:
    async with engine.connect() as conn:
        kinds = set(
            (
                await conn.execute(
                    text("SELECT DISTINCT kind FROM transactions WHERE programme_id = :p"), {"p": busy.id}
                )
            ).scalars()
        )
        violations = await verify(conn, busy.id)

    assert violations == []
    assert kinds == {
        "budget_allocation", "budget_top_up", "budget_move", "budget_close", "earn", "spend", "hold",
        "capture", "void", "hold_expiry", "transfer", "adjust", "clawback", "expire", "vest",
    }  # fmt: skip


async def test_clean_under_the_clamp_policy(engine: AsyncEngine) -> None:
    programme = await _busy_programme(engine, clawback_policy="clamp")
    async with engine.connect() as conn:
        assert await verify(conn, programme.id) == []


async def test_balance_drift(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        _, account = await _ids(conn, busy, "ann")
        await conn.execute(
            text(
                "UPDATE account_balances SET available = available + 5 WHERE programme_id = :p AND account_id = :a"
            ),
            {"p": busy.id, "a": account},
        )

    assert await _corrupted(engine, busy, corrupt) == {"balance_matches_entries", "lots_match_balance"}


async def test_unbalanced_transaction(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        # A leg too many: the transaction no longer sums to zero, and the redemption sink's
        # entries no longer match its balance.
        await conn.execute(
            text(
                """
                INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount)
                SELECT e.programme_id, e.txn_id, 99, e.account_id, e.shard, e.bucket, 7
                FROM entries e JOIN transactions t ON t.programme_id = e.programme_id AND t.id = e.txn_id
                WHERE e.programme_id = :p AND t.kind = 'spend' ORDER BY e.txn_id, e.seq LIMIT 1
                """
            ),
            {"p": busy.id},
        )

    assert await _corrupted(engine, busy, corrupt) == {"transaction_balanced", "balance_matches_entries"}


async def test_entry_pointing_at_no_balance_row(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        await conn.execute(
            text(
                """
                UPDATE entries SET shard = 77 WHERE (programme_id, txn_id, seq) =
                    (SELECT programme_id, txn_id, seq FROM entries WHERE programme_id = :p ORDER BY txn_id, seq LIMIT 1)
                """
            ),
            {"p": busy.id},
        )

    assert await _corrupted(engine, busy, corrupt) == {"balance_matches_entries"}


async def test_lot_drift(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        await conn.execute(
            text(
                """
                UPDATE lots SET remaining = remaining - 1 WHERE (programme_id, member_id, id) =
                    (SELECT programme_id, member_id, id FROM lots
                     WHERE programme_id = :p AND remaining > 0 AND vested ORDER BY id LIMIT 1)
                """
            ),
            {"p": busy.id},
        )

    assert await _corrupted(engine, busy, corrupt) == {"lots_match_balance"}


async def test_open_hold_without_its_lot_movements(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        await conn.execute(
            text(
                """
                DELETE FROM lot_movements mv USING holds h
                WHERE h.programme_id = mv.programme_id AND h.id = mv.hold_id
                  AND h.programme_id = :p AND h.status = 'open'
                """
            ),
            {"p": busy.id},
        )

    assert await _corrupted(engine, busy, corrupt) == {"open_hold_movements", "lots_match_balance"}


async def test_budget_issued_over_cap(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        # The floor must go first: the CHECK constraint would refuse the write otherwise.
        await conn.execute(
            text(
                """
                UPDATE account_balances ab SET floor = NULL, available = ab.available - r.remaining - 10
                FROM budgets b,
                     LATERAL (SELECT sum(available) AS remaining FROM account_balances x
                              WHERE x.programme_id = b.programme_id AND x.account_id = b.account_id) r
                WHERE b.programme_id = :p AND b.code = 'main'
                  AND ab.programme_id = b.programme_id AND ab.account_id = b.account_id AND ab.shard = 0
                """
            ),
            {"p": busy.id},
        )

    assert await _corrupted(engine, busy, corrupt) == {"budget_within_cap", "balance_matches_entries"}


async def test_cap_not_funded(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        await conn.execute(
            text("UPDATE budgets SET cap = cap + 1 WHERE programme_id = :p AND code = 'main'"), {"p": busy.id}
        )

    assert await _corrupted(engine, busy, corrupt) == {"budget_cap_funded", "funding_matches_caps"}


async def test_cap_below_issued(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        # Cap and funding moved together (so they agree), but the budget now holds more than its cap.
        await conn.execute(
            text(
                """
                WITH b AS (UPDATE budgets SET cap = 1 WHERE programme_id = :p AND code = 'capped'
                           RETURNING programme_id)
                SELECT 1 FROM b
                """
            ),
            {"p": busy.id},
        )

    assert "budget_within_cap" in await _corrupted(engine, busy, corrupt)


async def test_member_over_per_member_cap(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        await conn.execute(
            text(
                """
                UPDATE budget_member_usage u SET issued = b.per_member_cap + 1 FROM budgets b
                WHERE b.programme_id = u.programme_id AND b.id = u.budget_id AND u.programme_id = :p
                """
            ),
            {"p": busy.id},
        )

    assert await _corrupted(engine, busy, corrupt) == {"member_cap"}


async def test_funding_drift(engine: AsyncEngine, busy: Programme) -> None:
    async def corrupt(conn: AsyncConnection) -> None:
        # Balance and entry moved together: only the funding-vs-caps rule can see it.
        await conn.execute(
            text(
                """
                WITH f AS (SELECT a.id FROM accounts a WHERE a.programme_id = :p AND a.kind = 'funding'),
                     t AS (INSERT INTO transactions (programme_id, kind, amount) VALUES (:p, 'adjust', 0) RETURNING id),
                     e AS (INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount)
                           SELECT :p, t.id, 0, f.id, 0, 0, -3 FROM t, f
                           UNION ALL
                           SELECT :p, t.id, 1, a.id, 0, 0, 3 FROM t, accounts a
                           WHERE a.programme_id = :p AND a.kind = 'adjustments')
                UPDATE account_balances ab SET available = available + CASE a.kind WHEN 'funding' THEN -3 ELSE 3 END
                FROM accounts a WHERE a.programme_id = ab.programme_id AND a.id = ab.account_id
                  AND ab.programme_id = :p AND a.kind IN ('funding', 'adjustments')
                """
            ),
            {"p": busy.id},
        )

    assert await _corrupted(engine, busy, corrupt) == {"funding_matches_caps"}


async def test_checks_are_scoped_to_the_programme(engine: AsyncEngine, busy: Programme) -> None:
    other = await make_programme(engine)
    async with engine.connect() as conn, conn.begin() as tx:
        _, account = await _ids(conn, busy, "ann")
        await conn.execute(
            text("UPDATE account_balances SET held = held + 1 WHERE programme_id = :p AND account_id = :a"),
            {"p": busy.id, "a": account},
        )
        assert await verify(conn, other.id) == []
        everywhere = await verify(conn)
        await tx.rollback()

    assert {(v.check, v.programme_id) for v in everywhere} >= {
        ("balance_matches_entries", busy.id),
        ("lots_match_balance", busy.id),
    }
    assert set(CHECKS) >= {v.check for v in everywhere}


async def test_run_cli_exit_codes(
    engine: AsyncEngine, settings: Settings, busy: Programme, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(settings, busy.code) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "lots_match_balance" in out and "entries" in out

    assert await run_cli(settings, "no-such-programme") == 1

    lot_sql = """
        UPDATE lots SET remaining = remaining + :d WHERE (programme_id, member_id, id) =
            (SELECT programme_id, member_id, id FROM lots WHERE programme_id = :p AND vested
             ORDER BY id LIMIT 1)
    """
    async with engine.begin() as conn:
        await conn.execute(text(lot_sql), {"p": busy.id, "d": 1})
    try:
        assert await run_cli(settings, busy.code) == 1
        out = capsys.readouterr().out
        assert "[lots_match_balance]" in out
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(lot_sql), {"p": busy.id, "d": -1})
    assert await run_cli(settings, busy.code) == 0
