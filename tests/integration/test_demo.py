"""The demo seed: it runs on a fresh database, quickly, twice safely, and writes sensible data."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import demo
from loyalty.settings import Settings


async def _scalar(engine: AsyncEngine, sql: str, programme_id: int) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql), {"p": programme_id})).scalar_one() or 0)


async def test_demo_seed(settings: Settings, engine: AsyncEngine, tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, data_dir=tmp_path)
    assert not await demo.is_seeded(settings)

    started = time.monotonic()
    await demo.seed(settings)
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the seed took {elapsed:.1f}s"  # a loose bound: CI machines are shared
    assert await demo.is_seeded(settings)

    # The keys file: one key per role, readable by its owner only.
    path = demo.keys_file(settings)
    assert path == tmp_path / "demo_keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = json.loads(path.read_text())
    assert set(written["keys"]) == {"operator", "ecommerce", "crm", "marketing"}
    assert all(key.startswith("lk_") for key in written["keys"].values())
    # A console login per role, the admin's printed by `make serve`; its password works.
    console = written["console"]
    assert console["email"] == "admin@demo.example" and len(console["password"]) >= 12
    async with engine.begin() as conn:
        from loyalty.console.service import login

        token, _ = await login(
            conn, email=console["email"], password=console["password"], now=datetime.now(UTC)
        )
    assert token

    # A second seed changes nothing and keeps the keys.
    await demo.seed(settings)
    assert json.loads(path.read_text())["keys"] == written["keys"]

    async with engine.connect() as conn:
        programme = (
            await conn.execute(
                text(
                    "SELECT id, currency, timezone, clawback_policy, allow_transfers FROM programmes WHERE code = 'demo'"
                )
            )
        ).one()
    programme_id = programme.id
    assert (programme.currency, programme.timezone) == ("CNY", "Asia/Shanghai")
    assert (programme.clawback_policy, programme.allow_transfers) == ("negative", True)

    members = await _scalar(engine, "SELECT count(*) FROM members WHERE programme_id = :p", programme_id)
    assert 250 <= members <= 400
    async with engine.connect() as conn:
        attributes = (
            await conn.execute(
                text("SELECT attributes FROM members WHERE programme_id = :p LIMIT 1"), {"p": programme_id}
            )
        ).scalar_one()
    assert {"name", "city", "signup_channel"} <= set(attributes)

    async with engine.connect() as conn:
        budgets = (
            await conn.execute(
                text(
                    "SELECT b.code, b.cap, b.cap - sum(ab.available) AS issued FROM budgets b "
                    "JOIN account_balances ab ON ab.programme_id = b.programme_id AND ab.account_id = b.account_id "
                    "WHERE b.programme_id = :p GROUP BY b.code, b.cap"
                ),
                {"p": programme_id},
            )
        ).all()
    assert {b.code for b in budgets} == {"welcome", "orders", "birthday"}
    assert all(b.issued > 0 for b in budgets), budgets

    pending = await _scalar(
        engine,
        "SELECT sum(pending) FROM account_balances ab JOIN members m "
        "ON m.programme_id = ab.programme_id AND m.account_id = ab.account_id WHERE ab.programme_id = :p",
        programme_id,
    )
    assert pending > 0
    kinds = await _kinds(engine, programme_id)
    for kind in ("earn", "spend", "hold", "capture", "void", "clawback", "adjust", "transfer"):
        assert kinds.get(kind, 0) > 0, f"no {kind} in {kinds}"
    spent = await _scalar(
        engine,
        "SELECT -sum(amount) FROM transactions WHERE programme_id = :p AND kind = 'spend'",
        programme_id,
    )
    assert spent > 0

    # Every transaction balances, and every balance row is the sum of its entries.
    unbalanced = await _scalar(
        engine,
        "SELECT count(*) FROM (SELECT txn_id FROM entries WHERE programme_id = :p "
        "GROUP BY txn_id HAVING sum(amount) <> 0) t",
        programme_id,
    )
    assert unbalanced == 0
    drift = await _scalar(
        engine,
        """
        SELECT count(*) FROM account_balances ab LEFT JOIN (
            SELECT account_id, shard, sum(amount) FILTER (WHERE bucket = 0) AS a,
                   sum(amount) FILTER (WHERE bucket = 1) AS p, sum(amount) FILTER (WHERE bucket = 2) AS h
            FROM entries WHERE programme_id = :p GROUP BY account_id, shard) e
          ON e.account_id = ab.account_id AND e.shard = ab.shard
        WHERE ab.programme_id = :p AND (ab.available <> coalesce(e.a, 0) OR ab.pending <> coalesce(e.p, 0)
                                        OR ab.held <> coalesce(e.h, 0))
        """,
        programme_id,
    )
    assert drift == 0

    # Above the ledger: events built facts, the rule earned on them, some members climbed.
    events = await _scalar(engine, "SELECT count(*) FROM member_events WHERE programme_id = :p", programme_id)
    assert events > 150
    rule_earns = await _scalar(
        engine,
        "SELECT count(*) FROM transactions WHERE programme_id = :p AND metadata->>'rule' = 'orders-1-per-cny'",
        programme_id,
    )
    assert rule_earns == events
    async with engine.connect() as conn:
        tiers = dict(
            (
                await conn.execute(
                    text("SELECT tier, count(*) FROM member_tiers WHERE programme_id = :p GROUP BY tier"),
                    {"p": programme_id},
                )
            ).all()  # fmt: skip
        )
    assert tiers.get("silver", 0) > 0 and tiers.get("gold", 0) > 0, tiers
    benefits = await _scalar(engine, "SELECT count(*) FROM benefits WHERE programme_id = :p", programme_id)
    assert benefits == 3


async def _kinds(engine: AsyncEngine, programme_id: int) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind, count(*) FROM transactions WHERE programme_id = :p GROUP BY kind"),
            {"p": programme_id},
        )
        return {row[0]: int(row[1]) for row in rows}


async def test_demo_passes_ledger_verify(settings: Settings, tmp_path: Path) -> None:
    if importlib.util.find_spec("loyalty.ledger.verify") is None:
        pytest.skip("loyalty.ledger.verify is not written yet (another engineer's work in progress)")
    settings = dataclasses.replace(settings, data_dir=tmp_path)
    if not await demo.is_seeded(settings):
        await demo.seed(settings)
    verify = importlib.import_module("loyalty.ledger.verify")
    result = verify.run_cli(settings, "demo")
    if inspect.isawaitable(result):
        result = await result
    assert int(result) == 0
