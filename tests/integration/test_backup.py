"""`loyalty backup` and `loyalty restore`: a round trip gives back every row, every balance and a clean verify."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from loyalty import cli
from loyalty.app import create_app
from loyalty.db import create_engine, plain_url
from loyalty.migrate import upgrade_async
from loyalty.settings import Settings
from tests.api.helpers import Api
from tests.conftest import TEST_DATA_DIR, TEST_SECRET_KEY, ServerURLs
from tests.scratch import Scratch
from tests.support import Programme, make_programme

MEMBERS = ("alice", "bob", "carol")


@pytest.fixture
async def source(servers: ServerURLs, worker_id: str) -> AsyncIterator[str]:
    async with Scratch(servers, "backup", worker_id).database() as url:
        await upgrade_async(url)
        yield url


def _settings(url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=url,
        redis_url=redis_url,
        data_dir=TEST_DATA_DIR,
        secret_key=TEST_SECRET_KEY,
        worker_enabled=False,
        demo=False,
        db_pool_size=2,
        log_level="WARNING",
    )


async def _api(url: str, redis_url: str, programme: Programme) -> AsyncIterator[Api]:
    async with AsyncTestClient(app=create_app(_settings(url, redis_url))) as client:
        yield Api(client, programme)


async def _balances(url: str, redis_url: str, programme: Programme) -> dict[str, Any]:
    async for api in _api(url, redis_url, programme):
        return {member: await api.balance(member) for member in MEMBERS}
    raise AssertionError("unreachable")


async def _contents(url: str) -> dict[str, str]:
    """Every table's rows, as one digest per table: equal digests, equal contents."""
    connection = await asyncpg.connect(plain_url(url))
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        return {
            row["tablename"]: await connection.fetchval(
                f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM \"{row['tablename']}\" t"
            )
            for row in tables
        }
    finally:
        await connection.close()


def _error_lines(stderr: str) -> list[str]:
    # The apps of these tests log to stderr too; the command's own output is its error line.
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


async def _cli(monkeypatch: pytest.MonkeyPatch, url: str, *argv: str) -> tuple[int, str, str]:
    """Run one command; its exit code, stdout and stderr.

    Not pytest's capture fixture: the apps these tests create bind their log handler to the
    sys.stderr of the moment, and that fixture closes its stream when the test ends, under
    later tests' log lines.
    """
    monkeypatch.setenv("LOYALTY_DATABASE_URL", url)
    monkeypatch.setenv("LOYALTY_DATA_DIR", str(TEST_DATA_DIR))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        # The commands call asyncio.run(): off this test's event loop.
        code = await asyncio.to_thread(cli.main, list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_a_restored_backup_gives_back_every_row_and_balance(
    source: str,
    redis_url: str,
    servers: ServerURLs,
    worker_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = create_engine(source, pool_size=1)
    try:
        programme = await make_programme(engine)
    finally:
        await engine.dispose()
    async for api in _api(source, redis_url, programme):
        await api.budget()
        for member, points in zip(MEMBERS, (500, 300, 80), strict=True):
            await api.member_with(member, points)
        await api.spend("alice", 120)
        await api.hold("bob", 50)
    before = await _balances(source, redis_url, programme)
    contents = await _contents(source)
    code, verify_before, _ = await _cli(monkeypatch, source, "ledger", "verify")
    assert code == 0 and verify_before.rstrip().endswith("clean")

    backup = tmp_path / "nightly" / "loyalty.dump"
    assert (await _cli(monkeypatch, source, "backup", str(backup)))[0] == 0
    assert backup.read_bytes().startswith(b"PGDMP")  # pg_dump's custom format

    # Things change after the backup.
    async for api in _api(source, redis_url, programme):
        await api.earn("alice", 1_000)
        await api.spend("bob", 100)
        await api.enrol("dave")
    assert await _balances(source, redis_url, programme) != before

    # A database that holds data is not overwritten without --force.
    code, _, err = await _cli(monkeypatch, source, "restore", str(backup))
    assert code == 1
    (refused,) = _error_lines(err)
    assert refused.startswith("error: database ") and "not empty" in refused and "--force" in refused

    code, out, err = await _cli(monkeypatch, source, "restore", "--force", str(backup))
    assert code == 0, err
    assert "replacing what it held" in out

    assert await _balances(source, redis_url, programme) == before
    assert await _contents(source) == contents
    assert await _cli(monkeypatch, source, "ledger", "verify") == (0, verify_before, "")

    # Into an empty database, no --force is needed; a fresh server would get the same.
    async with Scratch(servers, "restore", worker_id).database() as empty:
        code, out, err = await _cli(monkeypatch, empty, "restore", str(backup))
        assert code == 0, err
        assert "into the empty database" in out
        assert await _contents(empty) == contents
        assert await _balances(empty, redis_url, programme) == before


async def test_a_file_that_is_no_backup_leaves_the_database_as_it_was(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = await _contents(source)
    bogus = tmp_path / "bogus.dump"
    bogus.write_bytes(b"not a dump at all\n" * 100)

    code, _, err = await _cli(monkeypatch, source, "restore", "--force", str(bogus))

    assert code == 1
    (error,) = _error_lines(err)
    assert error.startswith("error: pg_restore failed: ")
    assert await _contents(source) == contents


async def test_restore_of_a_missing_file_is_one_line(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.dump"

    code, _, err = await _cli(monkeypatch, source, "restore", str(missing))

    assert code == 1
    assert _error_lines(err) == [f"error: {missing}: no such backup file"]
