"""Operator accounts: use cases over a connection; flushes, never commits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.console import repository
from loyalty.console.core import CONSOLE_ROLES
from loyalty.console.passwords import MIN_LENGTH, hash_password
from loyalty.errors import Conflict, InvalidInput, NotFound
from loyalty.programmes import repository as programmes


async def create_operator(
    conn: AsyncConnection, *, email: str, programme_code: str, role: str, password: str
) -> int:
    """A new operator with a role in one programme; an existing email is a conflict."""
    email = email.strip().lower()
    if "@" not in email:
        raise InvalidInput("email", "must be an email address")
    if role not in CONSOLE_ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(CONSOLE_ROLES)}")
    if len(password) < MIN_LENGTH:
        raise InvalidInput("password", f"must be at least {MIN_LENGTH} characters")
    programme = await programmes.by_code(conn, programme_code)
    if programme is None:
        raise NotFound(f"No programme {programme_code!r}.", code="programme_not_found")
    if await repository.operator_id_by_email(conn, email) is not None:
        raise Conflict(f"An operator {email} exists already.", code="operator_exists")
    operator_id = await repository.insert_operator(conn, email, hash_password(password))
    await repository.set_role(conn, operator_id, programme["id"], role)
    return operator_id
