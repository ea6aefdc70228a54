"""The audit trail: ``record`` writes a row in the caller's transaction; reads page and export.

A use case calls ``record`` once its change is made and before it returns, on the same
connection. Nothing here commits: the row commits with the change, or neither does.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from loyalty.audit import core, repository
from loyalty.audit import schemas as s
from loyalty.audit.repository import AuditConnection
from loyalty.errors import InvalidInput
from loyalty.http.principal import Principal
from loyalty.observability.logs import request_id

# A reason given for a whole unit of work (a console form's "why" field, say), used by the
# rows that carry no reason of their own.
_reason: ContextVar[str | None] = ContextVar("loyalty_audit_reason", default=None)
EXPORT_BATCH = 1000


@contextmanager
def reason(text: str | None) -> Iterator[None]:
    """Rows recorded inside this block without a reason of their own get this one."""
    token = _reason.set(text)
    try:
        yield
    finally:
        _reason.reset(token)


async def record(
    conn: AuditConnection,
    who: Principal | str,
    *,
    action: str,
    entity: str,
    entity_id: str | int | None = None,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    programme_id: int | None = None,
) -> None:
    """Append one row to the audit trail in the caller's transaction.

    ``who`` is the request's principal (its actor, key id and, from the console, operator id
    are recorded), or a system actor's name such as "cli" together with ``programme_id``.
    ``before`` and ``after`` are snapshots of the entity (Structs, dicts, rows: anything
    msgspec turns into JSON); secret-named fields are redacted. On a plain asyncpg connection
    outside a transaction, wrap the change and this call in ``same_transaction(conn)``."""
    core.check_entry(action, entity, reason)
    await repository.insert(
        conn,
        core.actor_of(who, programme_id),
        action=action,
        entity=entity,
        entity_id=None if entity_id is None else str(entity_id),
        before=core.to_json(before),
        after=core.to_json(after),
        reason=reason if reason is not None else _reason.get(),
        request_id=request_id.get(),
    )


def same_transaction(conn: AuditConnection) -> AbstractAsyncContextManager[Any]:
    """One transaction around a change and its audit row. A posting on the HTTP path runs on an
    asyncpg connection in autocommit (each statement its own transaction): this opens one; a
    SQLAlchemy connection, or an asyncpg one already in a transaction, is used as it is."""
    if isinstance(conn, AsyncConnection | AsyncSession) or conn.is_in_transaction():
        return nullcontext()
    return conn.transaction()


def decoded(body: bytes) -> Any:
    """A posting function's JSON answer, as a snapshot for before/after."""
    return msgspec.json.decode(body)


# Reading -------------------------------------------------------------------------------------
# These take a programme id rather than a principal: the API route and the console (which has
# checked the operator's role itself) call them alike.

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


def _entry(row: dict[str, Any]) -> s.AuditEntry:
    return s.AuditEntry(**row, changed=core.changed(row["before"], row["after"]))


async def list_entries(
    conn: AsyncConnection | AsyncSession,
    programme_id: int,
    filters: core.Filter,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> s.AuditPage:
    """One page of the programme's trail, newest first. ``next_cursor`` (None on the last page)
    continues after this page's last row, whatever was written since. A bad filter, cursor or
    limit is an InvalidInput naming the field."""
    filters.check()
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput("limit", f"must be between 1 and {MAX_LIMIT}")
    position = core.decode_cursor(cursor) if cursor else None
    rows = await repository.page(conn, programme_id, filters, before=position, limit=limit + 1)
    items = [_entry(r) for r in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return s.AuditPage(
        items=items, next_cursor=core.encode_cursor(last.at, last.id) if last is not None else None
    )


CSV_COLUMNS = (
    "id",
    "at",
    "actor",
    "key_id",
    "operator_id",
    "action",
    "entity_type",
    "entity_id",
    "reason",
    "request_id",
    "changed",
    "before",
    "after",
)
# A cell a spreadsheet would take for a formula is quoted with a leading apostrophe (OWASP's
# advice against CSV injection): reasons and member ids come from people.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_row(row: dict[str, Any]) -> list[Any]:
    json = msgspec.json.encode
    return [
        row["id"],
        row["at"].isoformat(),
        _cell(row["actor"]),
        row["key_id"],
        row["operator_id"],
        row["action"],
        row["entity_type"],
        _cell(row["entity_id"]),
        _cell(row["reason"]),
        row["request_id"],
        " ".join(core.changed(row["before"], row["after"])),
        "" if row["before"] is None else _cell(json(row["before"]).decode()),
        "" if row["after"] is None else _cell(json(row["after"]).decode()),
    ]


async def csv_chunks(
    conn: AsyncConnection, programme_id: int, filters: core.Filter, batch: int = EXPORT_BATCH
) -> AsyncIterator[bytes]:
    """Every matching row as CSV (UTF-8, a header first), newest first, in chunks of ``batch``
    records, read through a server-side cursor: memory stays flat however long the trail. The
    connection must be in a transaction (REPEATABLE READ gives one snapshot); check the filter
    before the response starts (``filters.check()``), so that a bad one is a 4xx."""
    filters.check()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()
    async for rows in repository.stream(conn, programme_id, filters, batch):
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(_csv_row(r) for r in rows)
        yield buffer.getvalue().encode()


async def export_csv(
    engine: AsyncEngine, programme_id: int, filters: core.Filter, batch: int = EXPORT_BATCH
) -> AsyncIterator[bytes]:
    """``csv_chunks`` on a connection of its own, in one REPEATABLE READ snapshot, that lives as
    long as the response streams (the request's connection is gone by then)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            async for chunk in csv_chunks(conn, programme_id, filters, batch):
                yield chunk
