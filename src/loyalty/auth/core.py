"""Keys, member tokens and roles: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import secrets
import time

import jwt

from loyalty.errors import Unauthorized
from loyalty.http.principal import Principal
from loyalty.http.principal import Role as Role  # the roles, for callers of auth.core

KEY_ROLES: tuple[str, ...] = ("operator", "ecommerce", "crm", "marketing")
KEY_PREFIX = "lk_"
TOKEN_AUDIENCE = "loyalty-member"


def new_api_key() -> tuple[str, str, bytes]:
    """A fresh key: (the key shown once, its public prefix, the digest we store)."""
    body = secrets.token_urlsafe(32)
    key = f"{KEY_PREFIX}{body}"
    return key, key[:10], hash_key(key)


def hash_key(key: str) -> bytes:
    # Keys are 256-bit random strings: a plain SHA-256 cannot be brute-forced back, and keeps
    # per-request verification cheap (unlike password hashes, which are slow on purpose).
    return hashlib.sha256(key.encode()).digest()


def issue_member_token(
    *,
    secret: str,
    programme_id: int,
    programme_code: str,
    member_external_id: str,
    ttl_seconds: int,
    now: float | None = None,
) -> tuple[str, int]:
    issued = int(now if now is not None else time.time())
    expires = issued + ttl_seconds
    claims = {
        "sub": member_external_id,
        "pid": programme_id,
        "pcode": programme_code,
        "aud": TOKEN_AUDIENCE,
        "iat": issued,
        "exp": expires,
    }
    return jwt.encode(claims, secret, algorithm="HS256"), expires


def read_member_token(token: str, *, secret: str) -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=TOKEN_AUDIENCE)
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The member token has expired.", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("The member token is not valid.", code="invalid_token") from None
    return Principal(
        programme_id=int(claims["pid"]),
        programme_code=str(claims["pcode"]),
        role="member",
        member_external_id=str(claims["sub"]),
    )


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX)
