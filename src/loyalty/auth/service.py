"""Authentication of requests and management of API keys."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from loyalty.auth import core, repository
from loyalty.errors import InvalidInput, NotFound, Unauthorized

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from loyalty.settings import Settings


class KeyCache:
    """Recently verified keys, so that a hot path does not look its key up on every request.

    Bounded in size and age: a revoked key stops working within ``ttl`` seconds on every
    process, and nothing here outlives the process, so API processes stay interchangeable.
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._items: OrderedDict[bytes, tuple[float, core.Principal]] = OrderedDict()

    def get(self, key_hash: bytes) -> core.Principal | None:
        item = self._items.get(key_hash)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key_hash: bytes, principal: core.Principal) -> None:
        self._items[key_hash] = (time.monotonic() + self.ttl, principal)
        self._items.move_to_end(key_hash)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


class ProgrammeZones:
    """Programme time zones for member tokens, which do not carry one (a programme may change
    its zone while tokens are out). Kept ``ttl`` seconds, as keys are."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[int, tuple[float, str]] = {}

    async def get(self, engine: AsyncEngine, programme_id: int) -> str | None:
        item = self._items.get(programme_id)
        if item is not None and item[0] >= time.monotonic():
            return item[1]
        async with engine.connect() as conn:
            tz = await repository.programme_timezone(conn, programme_id)
        if tz is not None:
            if len(self._items) >= 10_000:
                self._items.clear()
            self._items[programme_id] = (time.monotonic() + self.ttl, tz)
        return tz


class Authenticator:
    def __init__(self, *, engine: AsyncEngine, secret: str, cache_ttl: float) -> None:
        self.engine = engine
        self.secret = secret
        self.cache = KeyCache(cache_ttl)
        self.zones = ProgrammeZones(cache_ttl)

    async def authenticate(self, authorization: str | None) -> core.Principal:
        if not authorization:
            raise Unauthorized(
                "Send 'Authorization: Bearer <API key or member token>'.", code="missing_credentials"
            )
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthorized("Use the Bearer scheme.", code="invalid_credentials")
        credential = credential.strip()
        if not core.looks_like_api_key(credential):
            member = core.read_member_token(credential, secret=self.secret)
            # A member sees dates in the programme's time zone, as staff do (quota resets...).
            tz = await self.zones.get(self.engine, member.programme_id)
            return member if tz is None else dataclasses.replace(member, timezone=tz)
        key_hash = core.hash_key(credential)
        principal = self.cache.get(key_hash)
        if principal is None:
            async with self.engine.connect() as conn:
                row = await repository.principal_row(conn, key_hash)
            if row is None:
                raise Unauthorized("Unknown or revoked API key.", code="invalid_api_key")
            key_id, programme_id, programme_code, role, tz = row
            principal = core.Principal(
                programme_id=programme_id,
                programme_code=programme_code,
                role=role,  # type: ignore[arg-type]
                key_id=key_id,
                timezone=tz,
            )
            self.cache.put(key_hash, principal)
        return principal


async def create_api_key(
    conn: AsyncConnection, *, programme_id: int, role: str, name: str = ""
) -> tuple[int, str]:
    if role not in core.KEY_ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(core.KEY_ROLES)}")
    key, prefix, key_hash = core.new_api_key()
    key_id = await repository.insert_key(conn, programme_id, role, name, key_hash, prefix)
    return key_id, key


def create_api_key_cli(settings: Settings, programme_code: str, role: str, name: str = "") -> str:
    """For `loyalty keys create`: makes a key in its own transaction and returns it."""
    import asyncio

    from loyalty.db import create_engine
    from loyalty.programmes import repository as programmes

    async def run() -> str:
        engine = create_engine(settings.database_url or "", pool_size=1)
        try:
            async with engine.begin() as conn:
                programme = await programmes.by_code(conn, programme_code)
                if programme is None:
                    raise NotFound(f"No programme {programme_code!r}.")
                _, key = await create_api_key(conn, programme_id=programme["id"], role=role, name=name)
                return key
        finally:
            await engine.dispose()

    return asyncio.run(run())
