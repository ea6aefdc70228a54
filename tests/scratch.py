"""Scratch databases on the suite's server, for tests that need a database of their own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from loyalty.db import plain_url
from tests.conftest import ServerURLs, _with_database


class Scratch:
    """Creates and drops databases named loyalty_test_<what>_<worker>_<pid>_<n>.

    The names start with loyalty_test_ and end in the pid, so conftest drops those that a killed
    run left behind.
    """

    def __init__(self, servers: ServerURLs, what: str, worker_id: str) -> None:
        self.servers = servers
        self.prefix = f"loyalty_test_{what}_{worker_id}"
        self.count = 0

    async def _admin(self, sql: str) -> None:
        admin = await asyncpg.connect(plain_url(self.servers.database_url))
        try:
            await admin.execute(sql)
        finally:
            await admin.close()

    def new_name(self) -> str:
        self.count += 1
        return f"{self.prefix}_{self.count}_{os.getpid()}"

    @asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        name = self.new_name()
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await self._admin(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(self.servers.database_url, name)
        finally:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
