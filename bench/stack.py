"""The system under test: PostgreSQL and Redis, a fresh seeded database, granian processes."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.workloads import BUDGETS, MEMBERS
from loyalty.db import create_engine, plain_url
from loyalty.embedded import resolve
from loyalty.migrate import upgrade
from loyalty.settings import Settings

BENCH_DATABASE = "loyalty_bench"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Caps far above what any run issues, so earn workloads never meet budget_exhausted.
BUDGET_CAP = 10**12
# Enough for every spend and hold of a long run: spends take 10 points at a time.
INITIAL_BALANCE = 1_000_000
_READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Seeded:
    programme_id: int
    keys: dict[str, str]


@contextlib.contextmanager
def servers(data_dir: Path) -> Iterator[Settings]:
    """Settings with URLs: LOYALTY_DATABASE_URL/REDIS_URL when set, else embedded servers."""
    settings = dataclasses.replace(Settings.from_env(), data_dir=data_dir)
    full, embedded = resolve(settings)
    try:
        yield full
    finally:
        if embedded is not None:
            embedded.stop()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(plain_url(url))
    return urlunsplit(parts._replace(path=f"/{name}"))


async def recreate_database(url: str, name: str = BENCH_DATABASE) -> str:
    """Drop and create the database ``name`` (loyalty_bench) next to the configured one, build it
    with the migrations, and answer its URL."""
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    bench_url = with_database(url, name)
    upgrade(bench_url)
    return bench_url


async def seed(url: str) -> Seeded:
    """One programme, a key per role, 100 budgets, 10,000 members with a starting balance."""
    # Imported late: these pull in the domain packages, which other engineers are changing.
    from loyalty.auth.service import create_api_key
    from loyalty.programmes.service import create_programme

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            programme_id = await create_programme(conn, code="bench", name="bench")
            keys = {}
            for role in ("operator", "ecommerce", "crm", "marketing"):
                _, keys[role] = await create_api_key(conn, programme_id=programme_id, role=role, name="bench")
        raw = await asyncpg.connect(url)
        try:
            await _seed_ledger(raw, programme_id)
        finally:
            await raw.close()
    finally:
        await engine.dispose()
    return Seeded(programme_id=programme_id, keys=keys)


async def _seed_ledger(conn: asyncpg.Connection, programme_id: int) -> None:
    # Set-based, through the posting engine itself, so the seed keeps every ledger invariant.
    await conn.execute(
        "SELECT ledger_create_budget($1, NULL, NULL, 'b' || i, '', $2, 10000, NULL, NULL, NULL, '{}', 16, 'bench') "
        "FROM generate_series(1, $3::int) i",
        programme_id,
        BUDGET_CAP,
        BUDGETS,
    )
    await conn.execute(
        "SELECT ledger_open_member($1, 'm' || i, '{}') FROM generate_series(1, $2::int) i",
        programme_id,
        MEMBERS,
    )
    await conn.execute(
        "SELECT ledger_earn($1, NULL, NULL, 'm' || i, 'b' || (1 + i % $3::int), $2, false, NULL, NULL, "
        "NULL, NULL, NULL, 'bench') FROM generate_series(1, $4::int) i",
        programme_id,
        INITIAL_BALANCE,
        BUDGETS,
        MEMBERS,
    )


async def settle(url: str) -> None:
    """Fresh statistics and a checkpoint, so no run pays for the seed's dirty pages."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def function_exists(url: str, name: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = $1", name))
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Granian:
    """An ASGI app factory served by granian in a process group of its own."""

    factory: str
    env: dict[str, str]
    workers: int = 2
    host: str = "127.0.0.1"
    port: int = dataclasses.field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
        return [
            sys.executable, "-m", "granian",
            "--interface", "asgi",
            "--factory", self.factory,
            "--workers", str(self.workers),
            "--host", self.host,
            "--port", str(self.port),
            "--loop", loop,
            "--log-level", "warning",
        ]  # fmt: skip

    def start(self, ready_path: str) -> Granian:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **self.env}
        # Own session: Ctrl-C reaches only the benchmark, which then stops granian in order.
        self.process = subprocess.Popen(self.command(), env=env, cwd=PROJECT_ROOT, start_new_session=True)
        self._wait_ready(ready_path)
        return self

    def _wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        url = f"http://{self.host}:{self.port}{path}"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"granian ({self.factory}) exited with {self.process.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{url} not ready within {_READY_TIMEOUT}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Granian:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def api_env(settings: Settings, database_url: str, pool_size: int) -> dict[str, str]:
    env = dataclasses.replace(
        settings,
        database_url=database_url,
        secret_key=secrets.token_urlsafe(32),
        db_pool_size=pool_size,
        log_level="WARNING",
        worker_enabled=False,
        demo=False,
    ).to_env()
    return env
