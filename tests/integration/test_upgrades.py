"""An upgraded database is the same as a new one.

Each file in tests/fixtures/schemas/ is the schema (and alembic_version) that an earlier commit's
own migrations built. The test restores it, runs today's `alembic upgrade head`, and compares
every function (definition and signature), table, column, constraint, index, trigger, view and
sequence with a database built from nothing by the same command.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from loyalty import sql_files
from loyalty.db import plain_url
from loyalty.migrate import alembic_config, upgrade_async
from tests.catalogue import Catalogue, differences, read
from tests.conftest import ServerURLs
from tests.scratch import Scratch

SCHEMAS = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"
DUMPS = sorted(SCHEMAS.glob("*.sql"))


def _restorable(dump: str) -> str:
    """The dump without psql's meta-commands, and without settings an older server lacks."""
    kept = []
    for line in dump.splitlines():
        if line.startswith("\\") or line.startswith("SET transaction_timeout"):
            continue
        kept.append(line)
    return "\n".join(kept)


@pytest.fixture(scope="module")
def scratch(servers: ServerURLs, worker_id: str) -> Scratch:
    return Scratch(servers, "upgrade", worker_id)


async def _catalogue(url: str) -> Catalogue:
    connection = await asyncpg.connect(plain_url(url))
    try:
        return await read(connection)
    finally:
        await connection.close()


async def _execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(plain_url(url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(plain_url(url))
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def fresh(scratch: Scratch) -> AsyncIterator[Catalogue]:
    """The catalogue of a database built from nothing by `alembic upgrade head`."""
    async with scratch.database() as url:
        await upgrade_async(url)
        yield await _catalogue(url)


def _head(url: str) -> str:
    (head,) = ScriptDirectory.from_config(alembic_config(url)).get_heads()
    return head


@pytest.mark.parametrize("dump", DUMPS, ids=[path.stem for path in DUMPS])
async def test_an_upgraded_database_is_the_same_as_a_new_one(
    dump: Path, scratch: Scratch, fresh: Catalogue
) -> None:
    async with scratch.database() as url:
        await _execute(url, _restorable(dump.read_text()))
        (before,) = await _fetch(url, "SELECT version_num FROM alembic_version")
        assert before["version_num"] == dump.stem.split("_")[0]

        await upgrade_async(url)

        assert differences(fresh, await _catalogue(url)) == []
        (after,) = await _fetch(url, "SELECT version_num FROM alembic_version")
        assert after["version_num"] == _head(url)
        recorded = {
            row["path"]: row["checksum"] for row in await _fetch(url, "SELECT * FROM repeatable_migrations")
        }
        assert recorded == {file.path: file.checksum for file in sql_files.load()}


def test_the_dumps_include_the_first_release_and_every_in_place_edit() -> None:
    # 0002: the first schema; 0003 before lot_movements.id, with ledger_expire_member_now
    # returning void; 0008 before 0008 dropped ix_domain_events_type; 0012: the last before
    # repeatable SQL files.
    assert {path.stem.split("_")[0] for path in DUMPS} >= {"0002", "0003", "0008", "0012"}


async def test_the_comparison_sees_a_stale_function_and_a_left_behind_overload(
    scratch: Scratch, fresh: Catalogue
) -> None:
    async with scratch.database() as url:
        await upgrade_async(url)
        await _execute(
            url,
            """
            CREATE OR REPLACE FUNCTION loyalty_ts(p_ts timestamptz) RETURNS text LANGUAGE sql IMMUTABLE
                AS $$ SELECT p_ts::text $$;
            CREATE FUNCTION loyalty_ts(p_ts timestamp) RETURNS text LANGUAGE sql AS $$ SELECT p_ts::text $$;
            """,
        )
        found = differences(fresh, await _catalogue(url))

    assert any(
        line.startswith("functions: differs loyalty_ts(p_ts timestamp with time zone)") for line in found
    )
    assert any(
        line.startswith("functions: left behind loyalty_ts(p_ts timestamp without time zone)")
        for line in found
    )


async def test_a_file_whose_recorded_checksum_matches_is_not_run_again(
    scratch: Scratch, fresh: Catalogue
) -> None:
    # The other side of the coin: the checksum, not the revision, decides. A database whose
    # records claim today's files keeps whatever functions it has, so the upgrade test above
    # would fail on the last release's dump if upgrade did not run the changed files.
    dump = next(path for path in DUMPS if path.stem.startswith("0002_"))
    async with scratch.database() as url:
        await _execute(url, _restorable(dump.read_text()))
        await _execute(url, sql_files._CREATE_RECORD_TABLE)
        for file in sql_files.load():
            await _execute(
                url,
                f"INSERT INTO repeatable_migrations (path, checksum) VALUES ('{file.path}', '{file.checksum}')",
            )
        await upgrade_async(url)
        found = differences(fresh, await _catalogue(url))

    assert any(line.startswith("functions: differs ledger_capture(") for line in found)
    assert any(line.startswith("functions: left behind ledger_spend(") for line in found)
    assert any(line.startswith("functions: missing ledger_earn_batch(") for line in found)


async def test_a_changed_file_is_run_again_and_an_unchanged_one_is_not(
    scratch: Scratch, fresh: Catalogue
) -> None:
    async with scratch.database() as url:
        await upgrade_async(url)
        first = {
            row["path"]: row["applied_at"] for row in await _fetch(url, "SELECT * FROM repeatable_migrations")
        }
        # A stale body in two files; only the first file's checksum says it changed.
        await _execute(
            url,
            """
            CREATE OR REPLACE FUNCTION loyalty_ts(p_ts timestamptz) RETURNS text LANGUAGE sql IMMUTABLE
                AS $$ SELECT 'stale' $$;
            CREATE OR REPLACE FUNCTION benefit_emit_tier_grants() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN RETURN NULL; END $$;
            UPDATE repeatable_migrations SET checksum = 'an earlier version' WHERE path = 'ledger/sql/ledger_v1.sql';
            """,
        )

        await upgrade_async(url)

        after = {
            row["path"]: row["applied_at"] for row in await _fetch(url, "SELECT * FROM repeatable_migrations")
        }
        found = differences(fresh, await _catalogue(url))

    assert after["ledger/sql/ledger_v1.sql"] > first["ledger/sql/ledger_v1.sql"]
    assert {path: at for path, at in after.items() if path != "ledger/sql/ledger_v1.sql"} == {
        path: at for path, at in first.items() if path != "ledger/sql/ledger_v1.sql"
    }
    assert [line.split(":\n")[0] for line in found] == ["functions: differs benefit_emit_tier_grants()"]


async def test_a_downgrade_and_upgrade_again_gives_the_new_schema(scratch: Scratch, fresh: Catalogue) -> None:
    async with scratch.database() as url:
        await upgrade_async(url)
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0009")
        assert await _fetch(url, "SELECT * FROM repeatable_migrations") == []
        assert not [
            row
            for row in await _fetch(url, "SELECT proname FROM pg_proc WHERE proname = 'activity_event_apply'")
        ]

        await upgrade_async(url)

        assert differences(fresh, await _catalogue(url)) == []
