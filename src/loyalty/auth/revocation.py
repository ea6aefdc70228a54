"""Revocation reaches every API process within a second: PostgreSQL LISTEN/NOTIFY.

Revoking a key sends NOTIFY in the revoking transaction (delivered at commit). Each process
keeps one dedicated connection LISTENing and empties its key cache on a notification. While
that connection is down (PostgreSQL restarting, a network cut), the cache is emptied and
keeps entries at most a second (``KeyCache.listening``), so nothing depends on the listener
being up; it reconnects with backoff. A ping each second notices a connection that hangs.
Redis plays no part, so revocation holds while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from loyalty.auth.repository import REVOCATION_CHANNEL
from loyalty.auth.service import KeyCache
from loyalty.db import plain_url

log = logging.getLogger("loyalty.auth.revocation")
PING_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 5.0


class RevocationListener:
    def __init__(self, database_url: str, cache: KeyCache) -> None:
        self.url = plain_url(database_url)
        self.cache = cache
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-key-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded, so that shutting down never hangs on a connection that will not close.
            await asyncio.wait({self._task}, timeout=CONNECT_TIMEOUT_SECONDS + PING_SECONDS)
            self._task = None

    def _on_notify(self, *_: Any) -> None:
        self.cache.clear()

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._listen()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: fall back to the short TTL and retry
                log.warning("key revocation listener down (%s: %s); retrying", type(exc).__name__, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self.url, timeout=CONNECT_TIMEOUT_SECONDS, server_settings={"application_name": "loyalty-keys"}
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(REVOCATION_CHANNEL, self._on_notify)
            # Revocations missed while disconnected: forget everything cached before now.
            self.cache.clear()
            self.cache.listening = True
            self.connected.set()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), PING_SECONDS)
                if not lost.is_set():
                    await conn.execute("SELECT 1", timeout=PING_SECONDS)
        finally:
            self.cache.listening = False
            self.cache.clear()
            self.connected.clear()
            conn.terminate()
