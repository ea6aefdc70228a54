"""Outages reach the client as quick 503 problems with Retry-After, never a 500 or a hang:
PostgreSQL refusing connections, PostgreSQL frozen (a proxy that stops passing bytes), Redis
refusing connections. What does not need the missing service goes on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.exceptions
import sqlalchemy.exc
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.app import create_app
from loyalty.db import async_url, plain_url
from loyalty.http.problems import unavailable_service
from loyalty.settings import Settings
from tests.support import Programme, make_programme, new_key

FAST = {"db_timeout_seconds": 0.5, "db_command_timeout_seconds": 0.5, "redis_timeout_seconds": 0.5}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_server(database_url: str, host: str, port: int) -> str:
    url = make_url(async_url(database_url)).set(host=host, port=port, query={})
    return plain_url(url.render_as_string(hide_password=False))


def _assert_unavailable(r: Any, code: str, started: float, bound: float = 1.8) -> dict[str, Any]:
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["retry-after"].isdigit()
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert elapsed < bound, f"answered after {elapsed:.2f}s"
    return body


class FreezableProxy:
    """A TCP proxy to the test PostgreSQL, on its own thread and event loop, that can stop
    passing bytes (a frozen server: new connections are accepted and then hang, open ones get
    no answer) and start again."""

    def __init__(self, database_url: str) -> None:
        url = make_url(async_url(database_url))
        socket_dir = url.query.get("host")
        if socket_dir:
            sockets = glob.glob(f"{socket_dir}/.s.PGSQL.*")
            assert sockets, f"no PostgreSQL socket in {socket_dir}"
            self.upstream: tuple[str, ...] = (sockets[0],)
        else:
            self.upstream = (url.host or "127.0.0.1", str(url.port or 5432))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thawed: asyncio.Event | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    def freeze(self, frozen: bool) -> None:
        assert self.thawed is not None
        self.loop.call_soon_threadsafe(self.thawed.clear if frozen else self.thawed.set)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _start(self) -> None:
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self.server is not None and self.thawed is not None
        self.thawed.set()
        self.server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.thawed is not None
        await self.thawed.wait()
        if len(self.upstream) == 1:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream[0])
        else:
            up_reader, up_writer = await asyncio.open_connection(self.upstream[0], int(self.upstream[1]))
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.thawed is not None
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self.thawed.wait()
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def outage_programme(engine: AsyncEngine) -> Programme:
    return await make_programme(engine)


@contextlib.asynccontextmanager
async def _client(settings: Settings, **changes: Any) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(dataclasses.replace(settings, **{**FAST, **changes}))
    async with AsyncTestClient(app=app) as client:
        yield client


async def _member_with_points(
    client: AsyncTestClient[Any], programme: Programme, member: str, *, points: int
) -> dict[str, Any]:
    """Before the outage: a member, the 'base' budget and one earn; the earn's body."""
    headers = programme.headers
    r = await client.post("/v1/members", json={"member_id": member}, headers=headers("crm"))
    assert r.status_code == 201, r.text
    budget = {"code": "base", "cap": 100_000, "unit_cost_micros": 10_000}
    assert (await client.post("/v1/budgets", json=budget, headers=headers("operator"))).status_code == 201
    earn = {"member_id": member, "budget": "base", "points": points}
    assert (await client.post("/v1/earn", json=earn, headers=headers("ecommerce"))).status_code == 201
    return earn


async def test_postgres_refusing_answers_503_quickly(settings: Settings, outage_programme: Programme) -> None:
    assert settings.database_url is not None
    dead = _with_server(settings.database_url, "127.0.0.1", _free_port())
    async with _client(settings, database_url=dead) as client:
        for method, path, body in (
            ("POST", "/v1/earn", {"member_id": "m", "budget": "base", "points": 1}),
            ("GET", "/v1/members/m/balance", None),
            ("POST", "/v1/events", {"type": "x"}),
            ("GET", "/v1/benefits/x/check?member_id=m", None),
        ):
            started = time.monotonic()
            r = await client.request(method, path, json=body, headers=outage_programme.headers("operator"))
            problem = _assert_unavailable(r, "database_unavailable", started)
            assert problem["service"] == "postgresql"
        live = await client.get("/health/live")
        assert live.status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        services = ready.json()["services"]
        assert services["postgresql"]["state"] == "down" and services["redis"]["state"] == "up"


async def test_postgres_frozen_answers_503_then_recovers_without_doubling(
    settings: Settings, outage_programme: Programme, engine: AsyncEngine
) -> None:
    assert settings.database_url is not None
    proxy = FreezableProxy(settings.database_url)
    proxy.start()
    try:
        url = _with_server(settings.database_url, "127.0.0.1", proxy.port)
        async with _client(settings, database_url=url) as client:
            headers = outage_programme.headers
            earn = await _member_with_points(client, outage_programme, "frozen", points=5)

            proxy.freeze(True)
            key = new_key()
            # Write lane, transaction path, read: each a quick 503, never a 2xx, never a hang.
            started = time.monotonic()
            r = await client.post("/v1/earn", json=earn, headers=headers("ecommerce", key))
            _assert_unavailable(r, "database_unavailable", started)
            started = time.monotonic()
            r = await client.post(
                "/v1/members", json={"member_id": "frozen-2"}, headers=headers("crm", new_key())
            )
            _assert_unavailable(r, "database_unavailable", started)
            started = time.monotonic()
            r = await client.get("/v1/members/frozen/balance", headers=headers("operator"))
            _assert_unavailable(r, "database_unavailable", started)
            ready = await client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["services"]["postgresql"]["state"] == "down"

            proxy.freeze(False)
            # Recovery needs nobody: broken pooled connections are replaced on their first error.
            for _ in range(20):
                r = await client.post("/v1/earn", json=earn, headers=headers("ecommerce", key))
                if r.status_code == 201:
                    break
                assert r.status_code == 503, r.text
                await asyncio.sleep(0.1)
            assert r.status_code == 201, r.text
            assert (await client.get("/health/ready")).status_code == 200
    finally:
        proxy.close()
    # The earn that timed out is in the ledger at most once: its retry with the same key applied
    # it (or replayed it, when the frozen statement did commit once the server woke up).
    conn = await asyncpg.connect(settings.database_url)
    try:
        earned = await conn.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE programme_id = $1 AND key = $2",
            outage_programme.id,
            key,
        )
    finally:
        await conn.close()
    assert earned == 1


async def test_fast_routes_meet_one_deadline_however_their_waits_add_up(
    settings: Settings, outage_programme: Programme
) -> None:
    """With PostgreSQL frozen, each wait (the group commit queue, the pool, connecting, the
    statement) is bounded on its own, and one after another they would add up to several
    times that. The fast routes answer within their one deadline instead: here 0.6 s, against
    bounds of 1.5 s per wait."""
    assert settings.database_url is not None
    proxy = FreezableProxy(settings.database_url)
    proxy.start()
    try:
        url = _with_server(settings.database_url, "127.0.0.1", proxy.port)
        slow = {"db_timeout_seconds": 1.5, "db_command_timeout_seconds": 1.5, "db_deadline": 0.6}
        async with _client(settings, database_url=url, **slow) as client:
            headers = outage_programme.headers
            earn = await _member_with_points(client, outage_programme, "d", points=1)

            proxy.freeze(True)

            async def one(path: str, body: dict[str, Any] | None, role: str) -> None:
                started = time.monotonic()
                method = "POST" if body is not None else "GET"
                r = await client.request(method, path, json=body, headers=headers(role, new_key()))
                _assert_unavailable(r, "database_unavailable", started, bound=1.2)

            # More callers than the pool has connections: most wait in the queue first.
            await asyncio.gather(
                *(one("/v1/earn", earn, "ecommerce") for _ in range(24)),
                *(one("/v1/benefits/x/check?member_id=d", None, "ecommerce") for _ in range(4)),
            )
    finally:
        proxy.freeze(False)
        proxy.close()


async def test_redis_refusing_needs_only_what_needs_redis(
    settings: Settings, outage_programme: Programme
) -> None:
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    async with _client(settings, redis_url=dead) as client:
        headers = outage_programme.headers
        assert (
            await client.post("/v1/members", json={"member_id": "r"}, headers=headers("crm"))
        ).status_code == 201
        budget = {"code": "base", "cap": 100_000, "unit_cost_micros": 10_000}
        assert (await client.post("/v1/budgets", json=budget, headers=headers("operator"))).status_code == 201
        earn = {"member_id": "r", "budget": "base", "points": 7}
        r = await client.post("/v1/earn", json=earn, headers=headers("ecommerce"))
        assert r.status_code == 201, r.text
        balance = await client.get("/v1/members/r/balance", headers=headers("operator"))
        assert balance.status_code == 200 and balance.json()["available"] == 7

        started = time.monotonic()
        r = await client.post("/v1/tiers/reassess", headers=headers("operator"))
        problem = _assert_unavailable(r, "redis_unavailable", started)
        assert problem["service"] == "redis"
        ready = await client.get("/health/ready")
        services = ready.json()["services"]
        assert ready.status_code == 503
        assert services["redis"]["state"] == "down" and services["postgresql"]["state"] == "up"


def test_only_connection_level_errors_are_unavailable() -> None:
    def dbapi(orig: BaseException, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
        return sqlalchemy.exc.DBAPIError("SELECT 1", None, orig, connection_invalidated=invalidated)

    assert unavailable_service(TimeoutError()) == "postgresql"
    assert unavailable_service(ConnectionRefusedError()) == "postgresql"
    assert unavailable_service(asyncpg.ConnectionDoesNotExistError("closed")) == "postgresql"
    assert unavailable_service(asyncpg.exceptions.CannotConnectNowError("starting")) == "postgresql"
    assert unavailable_service(sqlalchemy.exc.TimeoutError()) == "postgresql"
    # What asyncpg raises when the server vanished in the middle of a statement (seen in chaos).
    broken = asyncpg.exceptions._base.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert unavailable_service(broken) == "postgresql"
    assert unavailable_service(dbapi(Exception("gone"), invalidated=True)) == "postgresql"
    wrapped = Exception("adapted")
    wrapped.__cause__ = asyncpg.exceptions.AdminShutdownError("shutdown")
    assert unavailable_service(dbapi(wrapped)) == "postgresql"
    assert unavailable_service(redis.exceptions.ConnectionError()) == "redis"
    assert unavailable_service(redis.exceptions.TimeoutError()) == "redis"
    # A wrong statement or a broken invariant stays a 500 (or its own 4xx).
    assert unavailable_service(dbapi(asyncpg.UniqueViolationError("dup"))) is None
    assert unavailable_service(ValueError("bug")) is None
    assert unavailable_service(KeyError("x")) is None
