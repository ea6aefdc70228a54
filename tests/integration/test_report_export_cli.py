"""`loyalty export transactions`: the same CSV as the API's export, written whole or not at all."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import cli
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.settings import Settings
from tests.integration.test_report_rollup import setup


async def _cli(monkeypatch: pytest.MonkeyPatch, settings: Settings, *argv: str) -> tuple[int, str]:
    assert settings.database_url and settings.redis_url
    monkeypatch.setenv("LOYALTY_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("LOYALTY_REDIS_URL", settings.redis_url)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(cli.main, list(argv))
    return code, err.getvalue()


async def test_export_writes_the_periods_transactions(
    engine: AsyncEngine, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    who = await setup(engine)
    async with engine.begin() as conn:
        for points in (10, 20, 30):
            await ledger.earn(conn, who, ls.EarnRequest(member_id="m1", budget="main", points=points), None)
    target = tmp_path / "tx.csv"
    today = date.today().isoformat()
    code, err = await _cli(
        monkeypatch,
        settings,
        "export",
        "transactions",
        "--programme",
        who.programme_code,
        "--since",
        today,
        str(target),
    )
    assert code == 0, err
    rows = list(csv.DictReader(target.open(newline="")))
    assert [r["kind"] for r in rows] == ["budget_allocation", "earn", "earn", "earn"]
    assert [r["points"] for r in rows[1:]] == ["10", "20", "30"]
    assert [r["cost_micros"] for r in rows[1:]] == ["7000", "14000", "21000"]
    assert all(r["member_id"] == "m1" for r in rows if r["kind"] == "earn")
    assert "wrote 4 transactions" in err


async def test_a_bad_period_or_programme_writes_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: AsyncEngine
) -> None:
    who = await setup(engine)
    target = tmp_path / "tx.csv"
    code, err = await _cli(
        monkeypatch, settings, "export", "transactions", "--programme", who.programme_code,
        "--since", "2020-01-01", "--until", "2026-01-01", str(target),
    )  # fmt: skip
    assert code == 1 and "until" in err and "three years" in err
    code, err = await _cli(
        monkeypatch, settings, "export", "transactions", "--programme", "nope", str(target)
    )
    assert code == 1 and "no programme" in err
    assert list(tmp_path.iterdir()) == []
