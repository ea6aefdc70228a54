"""The bare-stack ceiling: raw ASGI apps under the same granian settings as the API, with no
framework in between.

- ``bare-http`` answers ``GET /accounts/{id}`` with a small JSON body and touches no database:
  what granian + the event loop + one ASGI call cost per request on this machine.
- ``bare-select`` answers the same route after one primary-key SELECT on a plain asyncpg pool
  (prepared statement, no SQLAlchemy): HTTP plus one database round trip.

Next to ``minimal-select`` (bench/minimal_app.py: the same SELECT through Litestar and
SQLAlchemy) they split a request's cost into HTTP, database and framework.

Factories for granian: ``bench.bare_app:http_app_from_env`` and ``bench.bare_app:select_app_from_env``
(LOYALTY_DATABASE_URL and LOYALTY_DB_POOL_SIZE, like the real app).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import asyncpg
import msgspec

from loyalty.db import plain_url

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SELECT = "SELECT id, balance FROM raw_accounts WHERE id = $1"
_PREFIX = "/accounts/"
_JSON = [(b"content-type", b"application/json")]
_NOT_FOUND = b'{"status":404}'
_encode = msgspec.json.encode


class BareApp:
    """``GET /accounts/{id}``: ``{"id": id, "balance": ...}``; the balance is read from
    ``raw_accounts`` when a database URL is given, else it is null and no database is touched."""

    def __init__(self, database_url: str | None, pool_size: int = 10) -> None:
        self.database_url = database_url
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            status, body = await self.answer(scope["path"])
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*_JSON, (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

    async def answer(self, path: str) -> tuple[int, bytes]:
        if not path.startswith(_PREFIX) or not path[len(_PREFIX) :].isdigit():
            return 404, _NOT_FOUND
        account_id = int(path[len(_PREFIX) :])
        balance = None
        if self.pool is not None:
            row = await self.pool.fetchrow(SELECT, account_id)
            balance = row[1] if row is not None else None
        return 200, _encode({"id": account_id, "balance": balance})

    async def startup(self) -> None:
        if self.database_url is not None:
            self.pool = await asyncpg.create_pool(
                plain_url(self.database_url), min_size=self.pool_size, max_size=self.pool_size
            )

    async def shutdown(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # the server reports it and exits
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def http_app_from_env() -> BareApp:
    return BareApp(None)


def select_app_from_env() -> BareApp:
    return BareApp(os.environ["LOYALTY_DATABASE_URL"], int(os.environ.get("LOYALTY_DB_POOL_SIZE", "10")))
