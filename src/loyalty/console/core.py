"""The console's pure rules: who may do what, CSRF tokens, login lockout. No I/O."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

ConsoleRole = Literal["analyst", "support", "marketer", "admin"]
CONSOLE_ROLES: tuple[ConsoleRole, ...] = ("analyst", "support", "marketer", "admin")

# The one permission map. Every console route names the permission it needs; admin holds all.
_READ = frozenset({"read", "export"})
_SUPPORT = frozenset({"member.adjust", "member.tier_pin", "member.void_hold", "member.revoke_grant"})
_MARKETER = frozenset({"rules", "segments", "benefits", "campaigns", "budgets"})
_ADMIN = frozenset({"keys", "webhooks", "operators", "settings"})
PERMISSIONS: dict[str, frozenset[str]] = {
    "analyst": _READ,
    "support": _READ | _SUPPORT,
    "marketer": _READ | _MARKETER,
    "admin": _READ | _SUPPORT | _MARKETER | _ADMIN,
}
ALL_PERMISSIONS = frozenset().union(*PERMISSIONS.values())


def may(role: str, permission: str) -> bool:
    """True when ``role`` holds ``permission``; an unknown permission is refused to everyone."""
    if permission not in ALL_PERMISSIONS:
        raise ValueError(f"unknown console permission {permission!r}")
    return permission in PERMISSIONS.get(role, frozenset())


def new_token() -> tuple[str, bytes]:
    """A session or invitation token: (the value given out once, the digest we store)."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> bytes:
    # 256-bit random tokens: SHA-256 cannot be reversed, and a lookup stays one index probe.
    return hashlib.sha256(token.encode()).digest()


def csrf_token(session_token: str, *, secret: str) -> str:
    """The session's CSRF token: derived from the session, so nothing more is stored."""
    return hmac.new(secret.encode(), b"csrf:" + session_token.encode(), hashlib.sha256).hexdigest()


def csrf_ok(sent: str | None, session_token: str, *, secret: str) -> bool:
    """Constant-time check of the token a form or an htmx header sent."""
    if not sent:
        return False
    return hmac.compare_digest(sent, csrf_token(session_token, secret=secret))


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class LoginCounter:
    failures: int
    locked_until: datetime | None


def locked(counter: LoginCounter, now: datetime) -> bool:
    return counter.locked_until is not None and now < counter.locked_until


def after_failure(counter: LoginCounter, now: datetime, policy: LockoutPolicy) -> LoginCounter:
    """One more failed login; the one that reaches the limit locks until now + lockout.

    A lock that has run out starts the count again from this failure."""
    failures = counter.failures + 1
    if counter.locked_until is not None and now >= counter.locked_until:
        failures = 1
    if failures >= policy.max_failures:
        return LoginCounter(failures=failures, locked_until=now + policy.lockout)
    return LoginCounter(failures=failures, locked_until=counter.locked_until if failures > 1 else None)


def idle_expired(last_seen: datetime, now: datetime, idle: timedelta) -> bool:
    return now - last_seen >= idle
