"""SQL of individual grants: insert, the audit view of one, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.benefits.repository.tables import (
    benefits,
    grants,
)


async def insert_grant(conn: AsyncConnection, programme_id: int, values: dict[str, Any]) -> dict[str, Any]:
    row = (
        await conn.execute(
            insert(grants)
            .values(programme_id=programme_id, **values)
            .returning(grants.c.id, grants.c.granted_at, grants.c.expires_at)
        )
    ).one()
    return dict(row._mapping)


async def grant_state(
    conn: AsyncConnection, programme_id: int, member_id: int, grant_id: int
) -> dict[str, Any] | None:
    """A grant as the audit trail shows it: what, until when, and whether it is revoked."""
    row = (
        await conn.execute(
            select(
                grants.c.id,
                benefits.c.code.label("benefit"),
                grants.c.expires_at,
                grants.c.revoked_at,
                grants.c.revoke_reason,
            )
            .join(
                benefits,
                (benefits.c.programme_id == grants.c.programme_id) & (benefits.c.id == grants.c.benefit_id),
            )
            .where(
                grants.c.programme_id == programme_id,
                grants.c.member_id == member_id,
                grants.c.id == grant_id,
            )
        )
    ).first()
    return dict(row._mapping) if row else None


async def revoke_grant(
    conn: AsyncConnection, programme_id: int, member_id: int, grant_id: int, reason: str, now: datetime
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            update(grants)
            .where(
                grants.c.programme_id == programme_id,
                grants.c.member_id == member_id,
                grants.c.id == grant_id,
            )
            .values(revoked_at=func.coalesce(grants.c.revoked_at, now), revoke_reason=reason)
            .returning(grants.c.id, grants.c.benefit_id, grants.c.revoked_at)
        )
    ).first()
    return dict(row._mapping) if row else None
