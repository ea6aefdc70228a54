"""Authentication of requests and management of API keys."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loyalty import audit
from loyalty.auth import core, repository
from loyalty.auth import schemas as s
from loyalty.db import within
from loyalty.errors import InvalidInput, NotFound, Unauthorized
from loyalty.members import service as members

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from loyalty.http.principal import Principal
    from loyalty.settings import Settings


# The longest a revoked key may still be accepted while no revocation listener is connected.
UNLISTENED_TTL_SECONDS = 1.0


class KeyCache:
    """Recently verified keys, so that a hot path does not look its key up on every request.

    Bounded in size and age. A revocation empties it at once on every process (see
    auth/revocation.py); while a process's listener is not connected, entries live at most
    ``UNLISTENED_TTL_SECONDS``, so a revoked key stops working within a second either way.
    Nothing here outlives the process, so API processes stay interchangeable.
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        # Set by the revocation listener while its connection is up.
        self.listening = False
        self._items: OrderedDict[bytes, tuple[float, core.Principal]] = OrderedDict()

    def get(self, key_hash: bytes) -> core.Principal | None:
        item = self._items.get(key_hash)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key_hash: bytes, principal: core.Principal) -> None:
        ttl = self.ttl if self.listening else min(self.ttl, UNLISTENED_TTL_SECONDS)
        self._items[key_hash] = (time.monotonic() + ttl, principal)
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

    async def get(self, engine: AsyncEngine, programme_id: int, deadline: float | None = None) -> str | None:
        item = self._items.get(programme_id)
        if item is not None and item[0] >= time.monotonic():
            return item[1]
        tz = await within(deadline, _programme_timezone(engine, programme_id))
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

    async def authenticate(self, authorization: str | None, deadline: float | None = None) -> core.Principal:
        """The caller behind the header; a key or zone not cached is looked up in PostgreSQL,
        by ``deadline`` (event-loop time) when one is given."""
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
            tz = await self.zones.get(self.engine, member.programme_id, deadline)
            return member if tz is None else dataclasses.replace(member, timezone=tz)
        key_hash = core.hash_key(credential)
        principal = self.cache.get(key_hash)
        if principal is None:
            row = await within(deadline, _principal_row(self.engine, key_hash))
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


async def _principal_row(engine: AsyncEngine, key_hash: bytes) -> tuple[int, int, str, str, str] | None:
    async with engine.connect() as conn:
        return await repository.principal_row(conn, key_hash)


async def _programme_timezone(engine: AsyncEngine, programme_id: int) -> str | None:
    async with engine.connect() as conn:
        return await repository.programme_timezone(conn, programme_id)


async def create_api_key(
    conn: AsyncConnection,
    *,
    programme_id: int,
    role: str,
    name: str | None = None,
    who: core.Principal | str = "system",
) -> tuple[int, str]:
    if role not in core.KEY_ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(core.KEY_ROLES)}")
    key, prefix, key_hash = core.new_api_key()
    # The name is a label for people; without one, the role and public prefix tell keys apart.
    key_id = await repository.insert_key(
        conn, programme_id, role, name or f"{role} {prefix}", key_hash, prefix
    )
    [row] = await repository.find_keys(conn, key_id=key_id)
    await audit.record(
        conn,
        who,
        action="api_key.create",
        entity="api_key",
        entity_id=key_id,
        after=row,
        programme_id=programme_id,
    )
    return key_id, key


async def list_api_keys(conn: AsyncConnection, programme_id: int | None = None) -> list[dict[str, Any]]:
    return await repository.list_keys(conn, programme_id)


async def revoke_api_key(
    conn: AsyncConnection,
    *,
    key_id: int | None = None,
    prefix: str | None = None,
    programme_id: int | None = None,
    who: core.Principal | str,
) -> dict[str, Any]:
    """Revoke one key, named by id or public prefix (within a programme when given); repeating
    it is harmless. Every API process stops accepting the key once this commits."""
    found = await repository.find_keys(conn, key_id=key_id, prefix=prefix, programme_id=programme_id)
    if not found:
        raise NotFound(
            "No API key with this id or prefix.", code="api_key_not_found", extra={"key": key_id or prefix}
        )
    if len(found) > 1:
        raise InvalidInput("key", f"the prefix {prefix!r} matches {len(found)} keys; give the key's id")
    await repository.revoke_key(conn, found[0]["id"])
    [row] = await repository.find_keys(conn, key_id=found[0]["id"])
    await audit.record(
        conn,
        who,
        action="api_key.revoke",
        entity="api_key",
        entity_id=row["id"],
        before=found[0],
        after=row,
        programme_id=await repository.key_programme(conn, row["id"]),
    )
    return row


def parse_key_ref(ref: str) -> tuple[int | None, str | None]:
    """`loyalty keys revoke` takes a key's id (digits) or its public prefix (lk_...)."""
    ref = ref.strip()
    if ref.isdigit() and len(ref) <= 18:
        return int(ref), None
    if ref.startswith(core.KEY_PREFIX):
        # A whole key works too: its first characters are the prefix.
        return None, ref[: len(core.KEY_PREFIX) + 7]
    raise InvalidInput("key", "give a key id (digits) or its prefix (lk_...)")


def _on_cli_engine(settings: Settings, work: Any) -> Any:
    import asyncio

    from loyalty.db import create_engine

    async def run() -> Any:
        engine = create_engine(settings.database_url or "", pool_size=1)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def _programme_id(conn: AsyncConnection, programme_code: str) -> int:
    from loyalty.programmes import repository as programmes

    programme = await programmes.by_code(conn, programme_code)
    if programme is None:
        raise NotFound(f"no programme {programme_code!r}")
    return int(programme["id"])


def create_api_key_cli(settings: Settings, programme_code: str, role: str, name: str | None = None) -> str:
    """For `loyalty keys create`: makes a key in its own transaction and returns it."""

    async def work(conn: AsyncConnection) -> str:
        programme_id = await _programme_id(conn, programme_code)
        _, key = await create_api_key(conn, programme_id=programme_id, role=role, name=name, who="cli")
        return key

    return str(_on_cli_engine(settings, work))


def list_api_keys_cli(settings: Settings, programme_code: str | None = None) -> list[dict[str, Any]]:
    async def work(conn: AsyncConnection) -> list[dict[str, Any]]:
        programme_id = None if programme_code is None else await _programme_id(conn, programme_code)
        return await list_api_keys(conn, programme_id)

    return list(_on_cli_engine(settings, work))


def revoke_api_key_cli(settings: Settings, ref: str) -> dict[str, Any]:
    key_id, prefix = parse_key_ref(ref)

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        return await revoke_api_key(conn, key_id=key_id, prefix=prefix, who="cli")

    return dict(_on_cli_engine(settings, work))


async def issue_member_token(
    conn: AsyncConnection, who: Principal, req: s.TokenRequest, secret: str
) -> s.TokenView:
    """A short-lived token for one member of the caller's programme; a 404 if there is none."""
    await members.get(conn, who, req.member_id)
    token, expires = core.issue_member_token(
        secret=secret,
        programme_id=who.programme_id,
        programme_code=who.programme_code,
        member_external_id=req.member_id,
        ttl_seconds=req.ttl_seconds,
    )
    return s.TokenView(
        token=token, member_id=req.member_id, expires_at=datetime.fromtimestamp(expires, tz=UTC)
    )
