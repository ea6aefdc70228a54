"""Operator accounts: use cases over a connection; flushes, never commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.console import repository
from loyalty.console.core import (
    CONSOLE_ROLES,
    ConsoleRole,
    LockoutPolicy,
    LoginCounter,
    after_failure,
    hash_token,
    idle_expired,
    locked,
    new_token,
)
from loyalty.console.passwords import MIN_LENGTH, hash_password, verify_password
from loyalty.errors import Conflict, DomainError, InvalidInput, NotFound
from loyalty.http.principal import Principal
from loyalty.programmes import repository as programmes


async def create_operator(
    conn: AsyncConnection,
    *,
    email: str,
    programme_code: str,
    role: str,
    password: str,
    who: Principal | str = "cli",
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
    await audit.record(
        conn,
        who,
        action="operator.create",
        entity="operator",
        entity_id=operator_id,
        after={"email": email, "role": role},
        programme_id=programme["id"],
    )
    return operator_id


# A session ends after this long whatever its activity; idle expiry is the setting.
SESSION_LIFETIME = timedelta(hours=12)
# last_seen_at is written at most this often: a page view is a read, not a write, mostly.
TOUCH_EVERY = timedelta(seconds=30)


class LoginRefused(DomainError):
    """Wrong email or password, or a locked or disabled account. The message never says which
    of email and password was wrong."""

    code = "login_refused"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """Who is at the console: the operator, the programme they work in now, and their role there."""

    session_id: int
    token: str
    operator_id: int
    email: str
    programme_id: int
    programme_code: str
    programme_name: str
    timezone: str
    role: ConsoleRole

    def principal(self) -> Principal:
        """The caller as the domain services see it: the programme's operator role, with the
        operator's id for the record (actor ``operator:<id>``). Which console permissions the
        operator holds is checked before any service is called (console.core.may)."""
        return Principal(
            programme_id=self.programme_id,
            programme_code=self.programme_code,
            role="operator",
            timezone=self.timezone,
            operator_id=self.operator_id,
        )


async def login(
    conn: AsyncConnection,
    *,
    email: str,
    password: str,
    now: datetime,
    policy: LockoutPolicy = LockoutPolicy(),
) -> tuple[str, int]:
    """Check the password and open a session in the operator's first programme.

    Returns (the session token, to put in the cookie, and the operator id). A failure is counted
    on the account (and the fifth in a row locks it for a while) in this same transaction, so
    the caller commits after a LoginRefused as well as after a success."""
    row = await repository.login_row(conn, email.strip().lower())
    if row is None:
        verify_password(None, password)  # as slow as a real check: no hint that the email is unknown
        raise LoginRefused("Wrong email or password.")
    counter = LoginCounter(failures=row["failed_logins"], locked_until=row["locked_until"])
    if locked(counter, now):
        raise LoginRefused(
            "Too many failed logins: this account is locked for a while. Try again later.",
            code="login_locked",
            extra={"locked_until": counter.locked_until.isoformat() if counter.locked_until else None},
        )
    if not verify_password(row["password_hash"], password) or row["disabled"]:
        after = after_failure(counter, now, policy)
        await repository.record_failure(conn, row["id"], after.failures, after.locked_until)
        if after.locked_until is not None and locked(after, now):
            raise LoginRefused(
                "Too many failed logins: this account is locked for a while. Try again later.",
                code="login_locked",
                extra={"locked_until": after.locked_until.isoformat()},
            )
        raise LoginRefused("Wrong email or password.")
    programmes = await repository.memberships(conn, row["id"])
    if not programmes:
        raise LoginRefused("This account has no programme to work in.", code="login_no_programme")
    if counter.failures or counter.locked_until is not None:
        await repository.clear_failures(conn, row["id"])
    token, digest = new_token()
    await repository.insert_session(conn, digest, row["id"], programmes[0]["id"], now + SESSION_LIFETIME)
    return token, int(row["id"])


async def session(
    conn: AsyncConnection, token: str, *, now: datetime, idle: timedelta
) -> ConsoleSession | None:
    """The live session for a cookie's token, or None (unknown, expired, idle too long, the
    account disabled, or its role in the programme withdrawn). Marks it seen."""
    row = await repository.session_row(conn, hash_token(token))
    if row is None:
        return None
    if (
        row["disabled"]
        or row["role"] is None
        or now >= row["expires_at"]
        or idle_expired(row["last_seen_at"], now, idle)
    ):
        await repository.delete_session(conn, hash_token(token))
        return None
    if now - row["last_seen_at"] >= TOUCH_EVERY:
        await repository.touch_session(conn, row["session_id"], now)
    return ConsoleSession(
        session_id=row["session_id"],
        token=token,
        operator_id=row["operator_id"],
        email=row["email"],
        programme_id=row["programme_id"],
        programme_code=row["programme_code"],
        programme_name=row["programme_name"],
        timezone=row["timezone"],
        role=row["role"],
    )


async def logout(conn: AsyncConnection, token: str) -> None:
    await repository.delete_session(conn, hash_token(token))


async def programmes_of(conn: AsyncConnection, operator_id: int) -> list[dict[str, Any]]:
    return await repository.memberships(conn, operator_id)


async def switch_programme(conn: AsyncConnection, current: ConsoleSession, programme_code: str) -> None:
    """Work in another of the operator's programmes; one they hold no role in is refused."""
    for membership in await repository.memberships(conn, current.operator_id):
        if membership["code"] == programme_code:
            await repository.set_session_programme(conn, current.session_id, membership["id"])
            return
    raise NotFound(f"You have no role in a programme {programme_code!r}.", code="programme_not_found")


# -- a programme's operators, and invitations ----------------------------------------------------

INVITATION_LIFETIME = timedelta(days=7)


def _check_role(role: str) -> None:
    if role not in CONSOLE_ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(CONSOLE_ROLES)}")


async def programme_operators(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    return await repository.programme_operators(conn, programme_id)


async def _keep_an_admin(conn: AsyncConnection, programme_id: int, operator_id: int) -> str:
    """The operator's role here (locked); refuses to take away the programme's last admin."""
    admins = await repository.lock_admins(conn, programme_id)
    role = await repository.role_of(conn, operator_id, programme_id, lock=True)
    if role is None:
        raise NotFound("This operator has no role in the programme.", code="operator_not_found")
    if role == "admin" and admins <= 1:
        raise Conflict(
            "This is the programme's last admin: make another operator admin first.", code="last_admin"
        )
    return role


async def change_role(
    conn: AsyncConnection, programme_id: int, operator_id: int, role: str, *, who: Principal | str
) -> None:
    _check_role(role)
    if role != "admin":
        before = await _keep_an_admin(conn, programme_id, operator_id)
    else:
        found = await repository.role_of(conn, operator_id, programme_id, lock=True)
        if found is None:
            raise NotFound("This operator has no role in the programme.", code="operator_not_found")
        before = found
    await repository.set_role(conn, operator_id, programme_id, role)
    await audit.record(
        conn,
        who,
        action="operator.role",
        entity="operator",
        entity_id=operator_id,
        before={"role": before},
        after={"role": role},
        programme_id=programme_id,
    )


async def remove_from_programme(
    conn: AsyncConnection, programme_id: int, operator_id: int, *, who: Principal | str
) -> None:
    """The operator loses their role here; their sessions in this programme end with it."""
    role = await _keep_an_admin(conn, programme_id, operator_id)
    await repository.remove_role(conn, operator_id, programme_id)
    await audit.record(
        conn,
        who,
        action="operator.remove",
        entity="operator",
        entity_id=operator_id,
        before={"role": role},
        programme_id=programme_id,
    )


async def invite(
    conn: AsyncConnection,
    *,
    programme_id: int,
    email: str,
    role: str,
    invited_by: int | None,
    now: datetime,
    who: Principal | str,
) -> str:
    """An invitation to the programme with a role; returns its one-time token (stored hashed)."""
    email = email.strip().lower()
    if "@" not in email or len(email) > 254 or email.startswith("@") or email.endswith("@"):
        raise InvalidInput("email", "must be an email address")
    _check_role(role)
    existing = await repository.operator_id_by_email(conn, email)
    if existing is not None and await repository.role_of(conn, existing, programme_id) is not None:
        raise Conflict(
            f"{email} works in this programme already.", code="operator_exists", extra={"field": "email"}
        )
    token, digest = new_token()
    invitation_id = await repository.insert_invitation(
        conn,
        token_hash=digest,
        email=email,
        programme_id=programme_id,
        role=role,
        invited_by=invited_by,
        expires_at=now + INVITATION_LIFETIME,
    )
    await audit.record(
        conn,
        who,
        action="operator.invite",
        entity="operator_invitation",
        entity_id=invitation_id,
        after={"email": email, "role": role, "expires_at": now + INVITATION_LIFETIME},
        programme_id=programme_id,
    )
    return token


async def pending_invitations(
    conn: AsyncConnection, programme_id: int, now: datetime
) -> list[dict[str, Any]]:
    return await repository.pending_invitations(conn, programme_id, now)


async def cancel_invitation(
    conn: AsyncConnection, programme_id: int, invitation_id: int, *, who: Principal | str
) -> None:
    if not await repository.delete_invitation(conn, programme_id, invitation_id):
        raise NotFound("No open invitation with this id.", code="invitation_not_found")
    await audit.record(
        conn,
        who,
        action="operator.invite_cancel",
        entity="operator_invitation",
        entity_id=invitation_id,
        programme_id=programme_id,
    )


class InvitationInvalid(NotFound):
    code = "invitation_invalid"


async def invitation(
    conn: AsyncConnection, token: str, now: datetime, *, lock: bool = False
) -> dict[str, Any]:
    """An open invitation, with whether its email has an account already; else InvitationInvalid."""
    row = await repository.invitation_row(conn, hash_token(token), lock=lock)
    if row is None or row["accepted_at"] is not None or now >= row["expires_at"]:
        raise InvitationInvalid("This invitation is not valid: it was used, cancelled or has expired.")
    row["operator_id"] = await repository.operator_id_by_email(conn, row["email"])
    return row


async def accept_invitation(conn: AsyncConnection, token: str, *, password: str, now: datetime) -> str:
    """Use the invitation once: a new account with this password, or, for an email that has an
    account already, the role added to it (its own password proves it is theirs). Returns the email."""
    row = await invitation(conn, token, now, lock=True)
    operator_id = row["operator_id"]
    if operator_id is None:
        if len(password) < MIN_LENGTH:
            raise InvalidInput("password", f"must be at least {MIN_LENGTH} characters")
        operator_id = await repository.insert_operator(conn, row["email"], hash_password(password))
    elif not verify_password(await repository.password_hash_of(conn, operator_id), password):
        raise InvalidInput("password", "is not this account's password")
    await repository.set_role(conn, operator_id, row["programme_id"], row["role"])
    await repository.mark_accepted(conn, row["id"], now)
    await audit.record(
        conn,
        f"operator:{operator_id}",
        action="operator.invite_accept",
        entity="operator",
        entity_id=operator_id,
        after={"email": row["email"], "role": row["role"], "invitation_id": row["id"]},
        programme_id=row["programme_id"],
    )
    return str(row["email"])
