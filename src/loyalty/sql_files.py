"""The SQL function and trigger files, applied as repeatable migrations.

Versioned Alembic revisions own the tables, columns, constraints and indexes. The functions and
the triggers that call them live in ``src/loyalty/*/sql/*.sql`` and change with the code, so
they are not frozen into a revision: after the last revision has run, every file whose SHA-256
differs from the one recorded in ``repeatable_migrations`` is run again, in the order of
``FILES``, in one transaction (Flyway's repeatable migrations work the same way).

So every file must be safe to run on a database that holds any earlier version of it:
``CREATE OR REPLACE FUNCTION``, ``DROP TRIGGER IF EXISTS`` before each ``CREATE TRIGGER``, and a
``DROP FUNCTION IF EXISTS`` for a function that was removed or whose arguments or result type
changed (``CREATE OR REPLACE`` cannot change a result type, and a changed argument list would
leave the old one behind as an overload). The files run after every table exists, so a
``LANGUAGE sql`` body may read any table; a versioned revision must not call these functions.

On a database with the ``citus`` extension (docs/scaling.md) a file is applied in its Citus
form: a line ``--citus: TEXT`` becomes ``TEXT`` (the filters and columns that route a statement
to its member's shard), and a line that ends in ``--@plain`` is left out. Without Citus a file
runs exactly as written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

PACKAGE_DIR = Path(__file__).resolve().parent

# In the order they run: later files may call functions of earlier ones.
FILES = (
    "ledger/sql/ledger_v1.sql",
    "ledger/sql/ledger_events_v1.sql",
    "ledger/sql/ledger_batch_v1.sql",
    "benefits/sql/benefit_events_v1.sql",
    "benefits/sql/benefit_consume_v1.sql",
    "activity/sql/activity_events_v1.sql",
    "reports/sql/reports_v1.sql",
    "imports/sql/imports_v1.sql",
)

# Written by the migration tool itself, like alembic_version: no model, no revision.
RECORD_TABLE = "repeatable_migrations"
# Two `loyalty migrate` at once (two hosts starting) apply the files one after the other.
_ADVISORY_LOCK = 0x6C6F79616C7479  # "loyalty"


@dataclass(frozen=True)
class SqlFile:
    path: str  # relative to the package, as in FILES
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


CITUS_LINE = "--citus:"
PLAIN_ONLY = "--@plain"


def load(paths: tuple[str, ...] = FILES, *, citus: bool = False) -> list[SqlFile]:
    files = [SqlFile(path, (PACKAGE_DIR / path).read_text()) for path in paths]
    return [SqlFile(file.path, citus_form(file.sql)) for file in files] if citus else files


def citus_form(sql: str) -> str:
    """The text of a file as it runs on Citus: ``--citus:`` lines uncommented, ``--@plain`` lines out."""
    out: list[str] = []
    for line in sql.splitlines():
        body = line.lstrip()
        if body.startswith(CITUS_LINE):
            indent = line[: len(line) - len(body)]
            out.append(indent + body[len(CITUS_LINE) :].removeprefix(" "))
        elif not line.rstrip().endswith(PLAIN_ONLY):
            out.append(line)
    return "\n".join(out) + "\n"


def has_citus(connection: Connection) -> bool:
    query = text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    return bool(connection.execute(query).scalar())


def statements(sql: str) -> list[str]:
    """Split a file into statements: PL/pgSQL bodies hold semicolons inside ``$$ ... $$``."""
    out: list[str] = []
    current: list[str] = []
    in_body = False
    for line in sql.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().removesuffix(PLAIN_ONLY).rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    if current and "".join(current).strip():
        out.append("\n".join(current))
    return out


_CREATE_RECORD_TABLE = f"""
CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (
    path text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

_RECORD = (
    f"INSERT INTO {RECORD_TABLE} (path, checksum) VALUES (:path, :checksum) "
    "ON CONFLICT (path) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()"
)


def apply_changed(connection: Connection, files: list[SqlFile] | None = None) -> list[str]:
    """Run the files whose checksum is not the recorded one; return their paths.

    Runs in the connection's current transaction: the caller commits, and a failing file
    leaves the functions and the records as they were.
    """
    citus = has_citus(connection)
    files = load(citus=citus) if files is None else files
    if citus:
        # The files replace triggers on distributed tables, which Citus refuses by default; the
        # Citus forms of those triggers only touch their own row's shard.
        connection.exec_driver_sql("SET LOCAL citus.enable_unsafe_triggers = on")
    connection.exec_driver_sql(_CREATE_RECORD_TABLE)
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    recorded = {
        row.path: row.checksum
        for row in connection.execute(text(f"SELECT path, checksum FROM {RECORD_TABLE}"))
    }
    applied: list[str] = []
    for file in files:
        if recorded.get(file.path) == file.checksum:
            continue
        for statement in statements(file.sql):
            # exec_driver_sql: no bind-parameter parsing of ':' inside function bodies.
            connection.exec_driver_sql(statement)
        connection.execute(text(_RECORD), {"path": file.path, "checksum": file.checksum})
        applied.append(file.path)
    known = [file.path for file in files]
    connection.execute(text(f"DELETE FROM {RECORD_TABLE} WHERE path <> ALL(:known)"), {"known": known})
    return applied


def forget(connection: Connection) -> None:
    """Drop every record, so that the next upgrade to head runs every file again.

    Called when a run ends below head (a downgrade): the downgrades drop the functions.
    """
    exists = connection.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": RECORD_TABLE})
    if exists.scalar_one():
        connection.exec_driver_sql(f"DELETE FROM {RECORD_TABLE}")


def offline_script(files: list[SqlFile] | None = None) -> Iterator[str]:
    """The statements `alembic upgrade head --sql` prints after the revisions: every file, recorded."""
    files = load() if files is None else files
    # Alembic ends each statement it prints with its own ';'.
    yield _CREATE_RECORD_TABLE.strip()
    for file in files:
        yield from (statement.rstrip().removesuffix(";") for statement in statements(file.sql))
        yield (
            f"INSERT INTO {RECORD_TABLE} (path, checksum) VALUES ('{file.path}', '{file.checksum}') "
            "ON CONFLICT (path) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()"
        )


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic autogenerate filter: the record table belongs to the tool, not to the models."""
    return not (type_ == "table" and name == RECORD_TABLE)
