"""All SQL of the console's operators."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.console.models import ConsoleSession, Operator, OperatorInvitation, OperatorProgramme


async def operator_id_by_email(conn: AsyncConnection, email: str) -> int | None:
    return (await conn.execute(select(Operator.id).where(Operator.email == email))).scalar_one_or_none()


async def insert_operator(conn: AsyncConnection, email: str, password_hash: str) -> int:
    row = await conn.execute(
        insert(Operator).values(email=email, password_hash=password_hash).returning(Operator.id)
    )
    return int(row.scalar_one())


async def set_role(conn: AsyncConnection, operator_id: int, programme_id: int, role: str) -> None:
    stmt = pg_insert(OperatorProgramme).values(operator_id=operator_id, programme_id=programme_id, role=role)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[OperatorProgramme.operator_id, OperatorProgramme.programme_id],
            set_={"role": stmt.excluded.role},
        )
    )


async def login_row(conn: AsyncConnection, email: str) -> dict[str, Any] | None:
    """The operator with this email, locked for the rest of the transaction (its counter)."""
    row = (
        await conn.execute(
            text(
                "SELECT id, password_hash, disabled, failed_logins, locked_until"
                " FROM operators WHERE email = :e FOR UPDATE"
            ),
            {"e": email},
        )
    ).first()
    return dict(row._mapping) if row else None


async def record_failure(
    conn: AsyncConnection, operator_id: int, failures: int, locked_until: datetime | None
) -> None:
    await conn.execute(
        update(Operator)
        .where(Operator.id == operator_id)
        .values(failed_logins=failures, locked_until=locked_until)
    )


async def clear_failures(conn: AsyncConnection, operator_id: int) -> None:
    await conn.execute(
        update(Operator).where(Operator.id == operator_id).values(failed_logins=0, locked_until=None)
    )


async def memberships(conn: AsyncConnection, operator_id: int) -> list[dict[str, Any]]:
    """The programmes an operator may work in, with the role in each, by code."""
    rows = await conn.execute(
        text(
            "SELECT p.id, p.code, p.name, op.role FROM operator_programmes op"
            " JOIN programmes p ON p.id = op.programme_id WHERE op.operator_id = :o ORDER BY p.code"
        ),
        {"o": operator_id},
    )
    return [dict(r._mapping) for r in rows]


async def insert_session(
    conn: AsyncConnection, token_hash: bytes, operator_id: int, programme_id: int, expires_at: datetime
) -> int:
    row = await conn.execute(
        insert(ConsoleSession)
        .values(
            token_hash=token_hash, operator_id=operator_id, programme_id=programme_id, expires_at=expires_at
        )
        .returning(ConsoleSession.id)
    )
    return int(row.scalar_one())


async def session_row(conn: AsyncConnection, token_hash: bytes) -> dict[str, Any] | None:
    """A session with its operator, programme and role there; one index probe and two joins."""
    row = (
        await conn.execute(
            text(
                "SELECT s.id AS session_id, s.operator_id, s.programme_id, s.last_seen_at, s.expires_at,"
                " o.email, o.disabled, op.role, p.code AS programme_code, p.name AS programme_name,"
                " p.timezone"
                " FROM console_sessions s JOIN operators o ON o.id = s.operator_id"
                " LEFT JOIN operator_programmes op"
                "   ON op.operator_id = s.operator_id AND op.programme_id = s.programme_id"
                " LEFT JOIN programmes p ON p.id = s.programme_id"
                " WHERE s.token_hash = :t"
            ),
            {"t": token_hash},
        )
    ).first()
    return dict(row._mapping) if row else None


async def touch_session(conn: AsyncConnection, session_id: int, now: datetime) -> None:
    await conn.execute(update(ConsoleSession).where(ConsoleSession.id == session_id).values(last_seen_at=now))


async def set_session_programme(conn: AsyncConnection, session_id: int, programme_id: int) -> None:
    await conn.execute(
        update(ConsoleSession).where(ConsoleSession.id == session_id).values(programme_id=programme_id)
    )


async def delete_session(conn: AsyncConnection, token_hash: bytes) -> None:
    await conn.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == token_hash))


async def delete_expired_sessions(conn: AsyncConnection, now: datetime, idle_since: datetime) -> int:
    result = await conn.execute(
        delete(ConsoleSession).where(
            (ConsoleSession.expires_at <= now) | (ConsoleSession.last_seen_at <= idle_since)
        )
    )
    return int(result.rowcount or 0)


async def emails_by_id(conn: AsyncConnection, operator_ids: set[int]) -> dict[int, str]:
    if not operator_ids:
        return {}
    rows = await conn.execute(select(Operator.id, Operator.email).where(Operator.id.in_(operator_ids)))
    return {int(r.id): str(r.email) for r in rows}


# -- a programme's operators and invitations ---------------------------------------------------


async def programme_operators(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT o.id, o.email, o.disabled, o.created_at, op.role FROM operator_programmes op"
            " JOIN operators o ON o.id = op.operator_id WHERE op.programme_id = :p ORDER BY o.email"
        ),
        {"p": programme_id},
    )
    return [dict(r._mapping) for r in rows]


async def role_of(
    conn: AsyncConnection, operator_id: int, programme_id: int, *, lock: bool = False
) -> str | None:
    sql = "SELECT role FROM operator_programmes WHERE operator_id = :o AND programme_id = :p"
    row = await conn.execute(
        text(sql + (" FOR UPDATE" if lock else "")), {"o": operator_id, "p": programme_id}
    )
    return row.scalar_one_or_none()


async def lock_admins(conn: AsyncConnection, programme_id: int) -> int:
    """The programme's admins, locked: two demotions at once cannot both pass the last-admin check."""
    rows = await conn.execute(
        text(
            "SELECT operator_id FROM operator_programmes WHERE programme_id = :p AND role = 'admin'"
            " ORDER BY operator_id FOR UPDATE"
        ),
        {"p": programme_id},
    )
    return len(rows.all())


async def remove_role(conn: AsyncConnection, operator_id: int, programme_id: int) -> None:
    await conn.execute(
        delete(OperatorProgramme).where(
            OperatorProgramme.operator_id == operator_id, OperatorProgramme.programme_id == programme_id
        )
    )


async def insert_invitation(
    conn: AsyncConnection,
    *,
    token_hash: bytes,
    email: str,
    programme_id: int,
    role: str,
    invited_by: int | None,
    expires_at: datetime,
) -> int:
    row = await conn.execute(
        insert(OperatorInvitation)
        .values(
            token_hash=token_hash,
            email=email,
            programme_id=programme_id,
            role=role,
            invited_by=invited_by,
            expires_at=expires_at,
        )
        .returning(OperatorInvitation.id)
    )
    return int(row.scalar_one())


async def invitation_row(
    conn: AsyncConnection, token_hash: bytes, *, lock: bool = False
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(
                "SELECT i.id, i.email, i.role, i.programme_id, i.expires_at, i.accepted_at,"
                " p.code AS programme_code, p.name AS programme_name"
                " FROM operator_invitations i JOIN programmes p ON p.id = i.programme_id"
                " WHERE i.token_hash = :t" + (" FOR UPDATE OF i" if lock else "")
            ),
            {"t": token_hash},
        )
    ).first()
    return dict(row._mapping) if row else None


async def pending_invitations(
    conn: AsyncConnection, programme_id: int, now: datetime
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT i.id, i.email, i.role, i.created_at, i.expires_at, o.email AS invited_by"
            " FROM operator_invitations i LEFT JOIN operators o ON o.id = i.invited_by"
            " WHERE i.programme_id = :p AND i.accepted_at IS NULL AND i.expires_at > :now"
            " ORDER BY i.id DESC"
        ),
        {"p": programme_id, "now": now},
    )
    return [dict(r._mapping) for r in rows]


async def delete_invitation(conn: AsyncConnection, programme_id: int, invitation_id: int) -> bool:
    result = await conn.execute(
        delete(OperatorInvitation).where(
            OperatorInvitation.id == invitation_id,
            OperatorInvitation.programme_id == programme_id,
            OperatorInvitation.accepted_at.is_(None),
        )
    )
    return bool(result.rowcount)


async def mark_accepted(conn: AsyncConnection, invitation_id: int, now: datetime) -> None:
    await conn.execute(
        update(OperatorInvitation).where(OperatorInvitation.id == invitation_id).values(accepted_at=now)
    )


async def password_hash_of(conn: AsyncConnection, operator_id: int) -> str | None:
    row = await conn.execute(select(Operator.password_hash).where(Operator.id == operator_id))
    return row.scalar_one_or_none()
