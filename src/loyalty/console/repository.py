"""All SQL of the console's operators."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.console.models import Operator, OperatorProgramme


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
