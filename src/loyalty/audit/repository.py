"""All SQL of the audit trail: one INSERT (on either kind of connection) and the filtered reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from loyalty.audit.core import Actor, Filter

# Services write through a SQLAlchemy connection (or session) in the request's transaction;
# ledger postings on the HTTP path hold a plain asyncpg connection.
AuditConnection: TypeAlias = (
    AsyncConnection | AsyncSession | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
)

_COLUMNS = "programme_id, actor, key_id, operator_id, action, entity_type, entity_id, before, after, reason, request_id"
_INSERT_NAMED = text(
    f"INSERT INTO audit_log ({_COLUMNS}) VALUES (:p, :actor, :key_id, :operator_id, :action, :entity, "
    ":entity_id, CAST(:before AS jsonb), CAST(:after AS jsonb), :reason, :request_id)"
)
_INSERT_POSITIONAL = (
    f"INSERT INTO audit_log ({_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9::text::jsonb, $10, $11)"
)
_READ = (
    "SELECT id, at, actor, key_id, operator_id, action, entity_type, entity_id, before, after, reason, "
    "request_id FROM audit_log"
)


async def insert(
    conn: AuditConnection,
    who: Actor,
    *,
    action: str,
    entity: str,
    entity_id: str | None,
    before: str | None,
    after: str | None,
    reason: str | None,
    request_id: str | None,
) -> None:
    if isinstance(conn, AsyncConnection | AsyncSession):
        await conn.execute(
            _INSERT_NAMED,
            {
                "p": who.programme_id,
                "actor": who.actor,
                "key_id": who.key_id,
                "operator_id": who.operator_id,
                "action": action,
                "entity": entity,
                "entity_id": entity_id,
                "before": before,
                "after": after,
                "reason": reason,
                "request_id": request_id,
            },
        )
        return
    await conn.execute(
        _INSERT_POSITIONAL,
        who.programme_id,
        who.actor,
        who.key_id,
        who.operator_id,
        action,
        entity,
        entity_id,
        before,
        after,
        reason,
        request_id,
    )


def _where(programme_id: int, f: Filter) -> tuple[str, dict[str, Any]]:
    clauses = ["programme_id = :p"]
    params: dict[str, Any] = {"p": programme_id}
    if f.since is not None:
        clauses.append("at >= :since")
        params["since"] = f.since
    if f.until is not None:
        clauses.append("at < :until")
        params["until"] = f.until
    if f.actor is not None:
        clauses.append("actor = :actor")
        params["actor"] = f.actor
    if f.action_prefix is not None:
        # A prefix range rather than LIKE: the (programme, action, at, id) index serves it.
        clauses.append("action >= :action_lo AND action < :action_hi")
        params["action_lo"] = f.action_prefix
        params["action_hi"] = f.action_prefix[:-1] + chr(ord(f.action_prefix[-1]) + 1)
    elif f.action is not None:
        clauses.append("action = :action")
        params["action"] = f.action
    if f.entity is not None:
        clauses.append("entity_type = :entity")
        params["entity"] = f.entity
    if f.entity_id is not None:
        clauses.append("entity_id = :entity_id")
        params["entity_id"] = f.entity_id
    return " AND ".join(clauses), params


async def page(
    conn: AsyncConnection | AsyncSession,
    programme_id: int,
    f: Filter,
    *,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Rows newest first, after the keyset position ``before`` (at, id) when given."""
    where, params = _where(programme_id, f)
    if before is not None:
        where += " AND (at, id) < (:before_at, :before_id)"
        params["before_at"], params["before_id"] = before
    rows = await conn.execute(
        text(f"{_READ} WHERE {where} ORDER BY at DESC, id DESC LIMIT :n"), {**params, "n": limit}
    )
    return [dict(r._mapping) for r in rows]


async def stream(
    conn: AsyncConnection, programme_id: int, f: Filter, chunk: int
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every matching row, newest first, through a server-side cursor, ``chunk`` rows at a time.
    The caller's transaction gives the snapshot."""
    where, params = _where(programme_id, f)
    stmt = text(f"{_READ} WHERE {where} ORDER BY at DESC, id DESC").execution_options(yield_per=chunk)
    result = await conn.stream(stmt, params)
    async for part in result.partitions(chunk):
        yield [dict(r._mapping) for r in part]
