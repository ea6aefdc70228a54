"""`loyalty` command line: serve / worker / migrate / demo / keys / ledger.

Settings are read here, once per command. Domain modules are imported inside the commands so
`loyalty --help` works whatever state the rest of the package is in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from loyalty.settings import Settings, ensure_secret_key

log = logging.getLogger("loyalty.cli")

API_FACTORY = "loyalty.app:app_from_env"
_CHILD_STOP_TIMEOUT = 15.0
_API_READY_TIMEOUT = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    from loyalty.observability.wiring import configure_process_logging

    # JSON lines for the long-running processes; other commands: console in a terminal.
    configure_process_logging(settings, default_format="json" if args.command in ("serve", "worker") else "auto")
    return int(args.handler(args, settings) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty", description="Loyalty points service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="migrate, seed the demo, run the API and the worker").set_defaults(
        handler=cmd_serve
    )
    commands.add_parser("worker", help="run the arq background worker").set_defaults(handler=cmd_worker)
    commands.add_parser("migrate", help="alembic upgrade head").set_defaults(handler=cmd_migrate)
    commands.add_parser("demo", help="seed the demo programme").set_defaults(handler=cmd_demo)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key and print it once")
    create.add_argument("--programme", required=True, help="programme code")
    create.add_argument("--role", required=True)
    create.add_argument("--name", default=None)
    create.set_defaults(handler=cmd_keys_create)

    programmes = commands.add_parser("programmes", help="programmes").add_subparsers(
        dest="programmes_command", required=True
    )
    programme_create = programmes.add_parser("create", help="create a programme and its system accounts")
    programme_create.add_argument("code", help="lowercase code, e.g. 'acme'")
    programme_create.add_argument("--name", required=True)
    programme_create.add_argument("--currency", default="CNY", help="ISO 4217 code (default: CNY)")
    programme_create.add_argument("--timezone", default="UTC", help="IANA name, e.g. Asia/Shanghai")
    programme_create.add_argument("--clawback-policy", choices=("negative", "clamp"), default="negative")
    programme_create.add_argument("--allow-transfers", action="store_true")
    programme_create.set_defaults(handler=cmd_programmes_create)
    programmes.add_parser("list", help="list every programme").set_defaults(handler=cmd_programmes_list)

    ledger = commands.add_parser("ledger", help="ledger maintenance").add_subparsers(
        dest="ledger_command", required=True
    )
    verify = ledger.add_parser("verify", help="check balances against the entry trail")
    verify.add_argument("--programme", default=None, help="programme code (default: all)")
    verify.set_defaults(handler=cmd_ledger_verify)

    tiers = commands.add_parser("tiers", help="tier engine").add_subparsers(
        dest="tiers_command", required=True
    )
    reassess = tiers.add_parser(
        "reassess", help="re-assess every member of a programme against the ladder in force (set-based)"
    )
    reassess.add_argument("--programme", required=True, help="programme code")
    reassess.add_argument("--batch", type=int, default=None, help="members per transaction (default 5000)")
    reassess.set_defaults(handler=cmd_tiers_reassess)
    return parser


@contextlib.contextmanager
def resolved(settings: Settings) -> Iterator[Settings]:
    """Settings with a secret key and database/Redis URLs, embedded servers started for unset ones."""
    from loyalty.embedded import resolve

    full, servers = resolve(ensure_secret_key(settings))
    try:
        yield full
    finally:
        if servers is not None:
            servers.stop()


def _run(value: Any) -> Any:
    """Accept the domain's CLI hooks whether they are plain or async functions."""
    return asyncio.run(value) if inspect.iscoroutine(value) else value


def _database_url(settings: Settings) -> str:
    assert settings.database_url is not None, "resolved() fills database_url"
    return settings.database_url


# --- commands ---------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.migrate import upgrade

    with resolved(settings) as full:
        upgrade(_database_url(full))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.migrate import upgrade

    demo = importlib.import_module("loyalty.demo")

    with resolved(settings) as full:
        upgrade(_database_url(full))
        _run(demo.seed(full))
        print(f"demo seeded; API keys in {_demo_keys_file(full)}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.worker import run_worker

    with resolved(settings) as full:
        run_worker(full)
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.auth.service import create_api_key_cli

    with resolved(settings) as full:
        key = _run(create_api_key_cli(full, args.programme, args.role, args.name))
    print(key)
    return 0


def cmd_programmes_create(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.db import create_engine
    from loyalty.errors import DomainError
    from loyalty.programmes.service import create_programme

    async def run(full: Settings) -> int:
        engine = create_engine(_database_url(full), pool_size=1)
        try:
            async with engine.begin() as conn:
                return await create_programme(
                    conn,
                    code=args.code,
                    name=args.name,
                    currency=args.currency,
                    timezone=args.timezone,
                    clawback_policy=args.clawback_policy,
                    allow_transfers=args.allow_transfers,
                )
        finally:
            await engine.dispose()

    with resolved(settings) as full:
        try:
            programme_id = asyncio.run(run(full))
        except DomainError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
    print(
        f"programme {args.code} created (id {programme_id}); add keys with: loyalty keys create --programme {args.code} --role operator"
    )
    return 0


def cmd_programmes_list(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from loyalty.db import create_engine
    from loyalty.programmes.models import Programme

    async def run(full: Settings) -> list[Any]:
        engine = create_engine(_database_url(full), pool_size=1)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(select(Programme).order_by(Programme.code))).all())
        finally:
            await engine.dispose()

    with resolved(settings) as full:
        rows = asyncio.run(run(full))
    print(f"{'CODE':<20} {'CURRENCY':<8} {'TIMEZONE':<20} {'CLAWBACK':<9} {'TRANSFERS':<9} NAME")
    for row in rows:
        transfers = "yes" if row.allow_transfers else "no"
        print(
            f"{row.code:<20} {row.currency:<8} {row.timezone:<20} {row.clawback_policy:<9} {transfers:<9} {row.name}"
        )
    return 0


def cmd_ledger_verify(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.ledger.verify import run_cli

    with resolved(settings) as full:
        return int(_run(run_cli(full, args.programme)))


def cmd_tiers_reassess(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from loyalty.db import create_engine
    from loyalty.programmes.models import Programme
    from loyalty.tiers import tasks

    async def run(full: Settings) -> int:
        engine = create_engine(_database_url(full), pool_size=tasks.REASSESS_CONCURRENCY + 1)
        try:
            async with engine.connect() as conn:
                programme_id = await conn.scalar(
                    select(Programme.__table__.c.id).where(Programme.__table__.c.code == args.programme)
                )
            if programme_id is None:
                print(f"error: no programme {args.programme!r}", file=sys.stderr)
                return 1
            result = await tasks.reassess_programme(
                engine, programme_id=programme_id, batch=args.batch or tasks.REASSESS_BATCH
            )
        finally:
            await engine.dispose()
        print(
            f"re-assessed {result.members} members ({result.changed} rows written) in {result.seconds:.1f} s: "
            f"{result.members_per_s:.0f} members/s"
        )
        return 0

    with resolved(settings) as full:
        return int(asyncio.run(run(full)))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.migrate import upgrade

    stop = _stop_on_signals()
    with resolved(settings) as full:
        upgrade(_database_url(full))
        _seed_demo_if_empty(full)
        with _children(full) as children:
            if not _wait_for_port(full.api_host, full.api_port, children, stop):
                return 0 if stop.is_set() else 1
            _print_banner(full)
            return _supervise(children, stop)


# --- serve helpers ----------------------------------------------------------------------------


def _stop_on_signals() -> threading.Event:
    """Turn SIGINT/SIGTERM into an event, so shutdown runs in order instead of mid-statement."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if not stop.is_set():
            print("\nstopping...", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _seed_demo_if_empty(settings: Settings) -> None:
    if not settings.demo:
        return
    if importlib.util.find_spec("loyalty.demo") is None:
        log.info("loyalty.demo not present; skipping the demo seed")
        return
    demo = importlib.import_module("loyalty.demo")

    async def seed_once() -> None:
        if not await demo.is_seeded(settings):
            await demo.seed(settings)

    asyncio.run(seed_once())


@contextlib.contextmanager
def _children(settings: Settings) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, **settings.to_env(), **_metrics_env(settings)}
    commands = [_api_command(settings)]
    if settings.worker_enabled:
        commands.append([sys.executable, "-m", "loyalty.cli", "worker"])
    children: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            # Own session: a terminal Ctrl-C reaches only us, and we stop the children in order.
            children.append(subprocess.Popen(command, env=env, start_new_session=True))
        yield children
    finally:
        for child in children:
            _stop_child(child)


def _metrics_env(settings: Settings) -> dict[str, str]:
    """One metrics directory for every child (emptied now), so any API process's /metrics
    shows the figures of all of them, the worker's included."""
    from loyalty.observability.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    path = Path(os.environ.get(MULTIPROC_ENV) or settings.data_dir / "run" / "metrics").resolve()
    return {MULTIPROC_ENV: str(prepare_multiprocess_dir(path))}


def _api_command(settings: Settings) -> list[str]:
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return [
        sys.executable, "-m", "granian",
        "--interface", "asgi",
        "--factory", API_FACTORY,
        "--host", settings.api_host,
        "--port", str(settings.api_port),
        "--workers", str(settings.api_workers),
        "--loop", loop,
        "--log-level", settings.log_level.lower(),
    ]  # fmt: skip


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(_CHILD_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("pid %s ignored SIGTERM for %ss; killing it", child.pid, _CHILD_STOP_TIMEOUT)
        child.kill()
        child.wait()


def _wait_for_port(
    host: str, port: int, children: list[subprocess.Popen[bytes]], stop: threading.Event
) -> bool:
    deadline = time.monotonic() + _API_READY_TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            log.error("a child process exited during start-up")
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        stop.wait(0.1)
    if not stop.is_set():
        log.error("the API did not listen on %s:%s within %ss", host, port, _API_READY_TIMEOUT)
    return False


def _supervise(children: list[subprocess.Popen[bytes]], stop: threading.Event) -> int:
    """Block until a signal (exit 0) or until a child dies on its own (exit 1)."""
    while not stop.wait(0.5):
        for child in children:
            if child.poll() is not None:
                log.error("child pid %s exited with %s; stopping", child.pid, child.returncode)
                return 1
    return 0


def _demo_keys_file(settings: Settings) -> Path:
    """Where the demo seed writes its API keys: ``loyalty.demo.keys_file(settings)`` if defined."""
    if importlib.util.find_spec("loyalty.demo") is None:
        return settings.data_dir / "demo_keys.json"
    keys_file = getattr(importlib.import_module("loyalty.demo"), "keys_file", None)
    return Path(keys_file(settings)) if callable(keys_file) else settings.data_dir / "demo_keys.json"


def _print_banner(settings: Settings) -> None:
    base = f"http://{settings.api_host}:{settings.api_port}"
    lines = [
        "loyalty is running",
        f"  API        {base}",
        f"  API docs   {base}/schema",
        f"  database   {settings.database_url}",
        f"  redis      {settings.redis_url}",
    ]
    if settings.demo:
        lines.append(f"  demo keys  {_demo_keys_file(settings)}")
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
