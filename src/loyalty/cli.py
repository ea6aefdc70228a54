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
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from loyalty.settings import Settings, ensure_secret_key

log = logging.getLogger("loyalty.cli")

API_FACTORY = "loyalty.app:app_from_env"
# SIGTERM, then SIGKILL to a child's whole session after this long.
_CHILD_STOP_TIMEOUT = 8.0
_API_READY_TIMEOUT = 30.0
# A child that dies is restarted after a backoff: 0.5 s doubling to 5 s, back to 0.5 s once it
# has run for 30 s.
_RESTART_BACKOFF_MIN = 0.5
_RESTART_BACKOFF_MAX = 5.0
_RESTART_STABLE_AFTER = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure is one `error: ...` line on stderr and exit code 1, never a traceback."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from loyalty.observability.wiring import configure_process_logging

    # JSON lines for the long-running processes; other commands: console in a terminal.
    configure_process_logging(
        settings, default_format="json" if args.command in ("serve", "worker") else "auto"
    )
    try:
        return int(args.handler(args, settings) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from loyalty.cli_errors import describe

        log.debug("the command failed", exc_info=exc)
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1


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
    create.add_argument("--name", default=None, help="a label (default: the role and the key's prefix)")
    create.set_defaults(handler=cmd_keys_create)
    key_list = keys.add_parser("list", help="list API keys (prefixes only, never secrets)")
    key_list.add_argument("--programme", default=None, help="programme code (default: all)")
    key_list.set_defaults(handler=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke an API key; every API process refuses it within a second")
    revoke.add_argument("key", metavar="KEY_ID_OR_PREFIX", help="the key's id or its prefix (lk_...)")
    revoke.set_defaults(handler=cmd_keys_revoke)

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

    backup = commands.add_parser("backup", help="write a pg_dump archive (-Fc) of the database to FILE")
    backup.add_argument("file", type=Path, metavar="FILE")
    backup.set_defaults(handler=cmd_backup)
    restore = commands.add_parser(
        "restore", help="restore a backup; a database that holds anything is replaced only with --force"
    )
    restore.add_argument("file", type=Path, metavar="FILE")
    restore.add_argument(
        "--force", action="store_true", help="replace a non-empty database (restored beside it, then swapped)"
    )
    restore.set_defaults(handler=cmd_restore)

    tiers = commands.add_parser("tiers", help="tier engine").add_subparsers(
        dest="tiers_command", required=True
    )
    reassess = tiers.add_parser(
        "reassess", help="re-assess every member of a programme against the ladder in force (set-based)"
    )
    reassess.add_argument("--programme", required=True, help="programme code")
    reassess.add_argument("--batch", type=int, default=None, help="members per transaction (default 5000)")
    reassess.set_defaults(handler=cmd_tiers_reassess)

    exports = commands.add_parser("export", help="exports for finance").add_subparsers(
        dest="export_command", required=True
    )
    export_tx = exports.add_parser("transactions", help="a period's transactions as CSV (streamed)")
    export_tx.add_argument("--programme", required=True, help="programme code")
    export_tx.add_argument(
        "--since", type=date.fromisoformat, default=None, help="first local day (YYYY-MM-DD)"
    )
    export_tx.add_argument("--until", type=date.fromisoformat, default=None, help="last local day, included")
    export_tx.add_argument("file", type=Path, metavar="FILE", help="where to write it; - for stdout")
    export_tx.set_defaults(handler=cmd_export_transactions)
    imports = commands.add_parser(
        "import", help="bulk CSV imports of members and point grants"
    ).add_subparsers(dest="import_command", required=True)
    for kind, description in (
        ("members", "create or update members from a CSV file (member_id, status, attributes.<key>, tags)"),
        (
            "points",
            "grant points from a budget to members from a CSV file (member_id, points, reference, reason)",
        ),
    ):
        command = imports.add_parser(kind, help=description)
        command.add_argument("file", type=Path, help="the CSV file; its first line is the header")
        command.add_argument("--programme", required=True, help="programme code")
        if kind == "points":
            command.add_argument("--budget", required=True, help="the budget the points are granted from")
        command.add_argument(
            "--errors", type=Path, default=None, help="error report path (default FILE.errors.csv)"
        )
        command.add_argument("--batch", type=int, default=None, help="rows per transaction (default 500)")
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
        command.set_defaults(handler=cmd_import, import_kind=kind)
    operators = commands.add_parser("operators", help="console operators").add_subparsers(
        dest="operators_command", required=True
    )
    operator_create = operators.add_parser(
        "create", help="create a console operator; a generated password is printed once"
    )
    operator_create.add_argument("email")
    operator_create.add_argument("--programme", required=True, help="programme code")
    operator_create.add_argument("--role", required=True, choices=("analyst", "support", "marketer", "admin"))
    operator_create.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    operator_create.set_defaults(handler=cmd_operators_create)
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
        login = _demo_console_login(full)
        if login:
            print(f"console login: {login}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.worker import run_worker

    with resolved(settings) as full:
        run_worker(full)
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.auth.service import create_api_key_cli
    from loyalty.errors import DomainError

    with resolved(settings) as full:
        try:
            key = _run(create_api_key_cli(full, args.programme, args.role, args.name))
        except DomainError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.auth.service import list_api_keys_cli
    from loyalty.errors import DomainError

    with resolved(settings) as full:
        try:
            rows = list_api_keys_cli(full, args.programme)
        except DomainError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
    print(f"{'ID':<6} {'PROGRAMME':<16} {'PREFIX':<11} {'ROLE':<10} {'CREATED':<20} {'REVOKED':<20} NAME")
    for row in rows:
        created = row["created_at"].strftime("%Y-%m-%d %H:%M:%S")
        revoked = row["revoked_at"].strftime("%Y-%m-%d %H:%M:%S") if row["revoked_at"] else "-"
        print(
            f"{row['id']:<6} {row['programme']:<16} {row['prefix']:<11} {row['role']:<10} {created:<20} {revoked:<20} {row['name']}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.auth.service import revoke_api_key_cli
    from loyalty.errors import DomainError

    with resolved(settings) as full:
        try:
            row = revoke_api_key_cli(full, args.key)
        except DomainError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
    print(f"key {row['id']} ({row['prefix']}, {row['role']} of {row['programme']}) revoked")
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
                    who="cli",
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


def cmd_export_transactions(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.reports.cli import run_export

    with resolved(settings) as full:
        return int(_run(run_export(full, args.programme, args.since, args.until, args.file)))


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.imports.cli import run_import_file

    if not args.file.is_file():
        print(f"error: no file {str(args.file)!r}", file=sys.stderr)
        return 1
    with _database_only(settings) as url:
        return asyncio.run(
            run_import_file(
                url,
                kind=args.import_kind,
                path=args.file,
                programme=args.programme,
                budget=getattr(args, "budget", None),
                errors=args.errors,
                batch=args.batch,
                show_progress=not args.no_progress,
            )
        )


@contextlib.contextmanager
def _database_only(settings: Settings) -> Iterator[str]:
    """The database URL, starting only the embedded PostgreSQL when none is set (no Redis)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    from loyalty.embedded import EmbeddedServers

    with EmbeddedServers(settings.data_dir, redis=False) as servers:
        yield servers.database_url


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.backup import backup

    with _database_only(settings) as url:
        backup(url, args.file)
    print(f"backup written to {args.file} ({args.file.stat().st_size:,} bytes)")
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.backup import restore

    with _database_only(settings) as url:
        print(asyncio.run(restore(url, args.file, force=args.force)))
    return 0


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


def cmd_operators_create(args: argparse.Namespace, settings: Settings) -> int:
    from loyalty.console.passwords import generate_password
    from loyalty.console.service import create_operator
    from loyalty.db import create_engine
    from loyalty.errors import DomainError

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else generate_password()

    async def run(full: Settings) -> int:
        engine = create_engine(_database_url(full), pool_size=1)
        try:
            async with engine.begin() as conn:
                return await create_operator(
                    conn, email=args.email, programme_code=args.programme, role=args.role, password=password
                )
        finally:
            await engine.dispose()

    with resolved(settings) as full:
        try:
            operator_id = asyncio.run(run(full))
        except DomainError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
    print(f"operator {operator_id} {args.email.strip().lower()} ({args.role} of {args.programme}) created")
    if not args.password_stdin:
        print(f"password (shown once): {password}")
    return 0


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


class _Child:
    """One supervised child (the API or the worker) in its own session, so that it and every
    process it starts (granian's workers) can be signalled and waited for as one group."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.backoff = _RESTART_BACKOFF_MIN
        self.started_at = 0.0

    def start(self) -> None:
        # Own session: a terminal Ctrl-C reaches only us, and we stop the children in order.
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True)
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exited(self) -> int | None:
        """The exit status if the child's main process has ended, else None."""
        return self.process.poll() if self.process is not None else None

    def stop(self, timeout: float = _CHILD_STOP_TIMEOUT) -> None:
        if self.process is not None:
            _stop_session(self.process, timeout)


def session_members(sid: int) -> list[Any]:
    """Live processes (not zombies) of session ``sid``: the child and whatever it spawned,
    even those whose parent died and that were re-parented."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def _signal_session(sid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signum)
    for proc in session_members(sid):  # any that moved to another process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signum)


def _stop_session(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to the child's whole session, wait up to ``timeout`` for all of it to end, then
    SIGKILL whatever is left. Always reaps the child itself."""
    sid = process.pid  # start_new_session: the child leads its session and its process group
    _signal_session(sid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(0.1)
        if not session_members(sid):
            break
    else:
        log.warning("%s ignored SIGTERM for %ss; killing its processes", process.pid, timeout)
        _signal_session(sid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5
        while session_members(sid) and time.monotonic() < kill_deadline:
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


@contextlib.contextmanager
def _children(settings: Settings) -> Iterator[list[_Child]]:
    env = {**os.environ, **settings.to_env(), **_metrics_env(settings)}
    children = [_Child("api", _api_command(settings), env)]
    if settings.worker_enabled:
        children.append(_Child("worker", [sys.executable, "-m", "loyalty.cli", "worker"], env))
    try:
        for child in children:
            child.start()
        yield children
    finally:
        # Ignore further signals while stopping: a second Ctrl-C must not leave children behind.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in children:
            child.stop()


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


_START_UP_RESTARTS = 3


def _wait_for_port(host: str, port: int, children: list[_Child], stop: threading.Event) -> bool:
    deadline = time.monotonic() + _API_READY_TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True  # a child that died meanwhile is _supervise's to restart
        for child in children:
            status = child.exited()
            if status is None:
                continue
            if status < 0 and child.restarts < _START_UP_RESTARTS:
                # Killed from outside (kill -9, the OOM killer): not a start-up error; again.
                child.restarts += 1
                log.warning("the %s (pid %s) was killed during start-up (%s); starting it again",
                            child.name, child.pid, status)  # fmt: skip
                child.stop(_CHILD_STOP_TIMEOUT)  # its orphans go first
                child.start()
                continue
            # Exited by itself (bad settings, a port in use ...): restarting would loop.
            log.error("the %s (pid %s) exited during start-up with %s", child.name, child.pid, status)
            return False
        stop.wait(0.1)
    if not stop.is_set():
        log.error("the API did not listen on %s:%s within %ss", host, port, _API_READY_TIMEOUT)
    return False


def _supervise(children: list[_Child], stop: threading.Event) -> int:
    """Until a signal (exit 0): a child that dies is cleaned up (its whole session) and
    started again after a backoff that doubles up to a cap, and resets once it has run a while.
    One child dying never takes the other down."""
    due: dict[str, float] = {}
    while not stop.wait(0.2):
        now = time.monotonic()
        for child in children:
            if child.name in due:
                if now >= due[child.name]:
                    del due[child.name]
                    child.restarts += 1
                    child.start()
                    log.warning("%s restarted (pid %s, restart %d)", child.name, child.pid, child.restarts)
                continue
            status = child.exited()
            if status is None:
                if now - child.started_at > _RESTART_STABLE_AFTER:
                    child.backoff = _RESTART_BACKOFF_MIN
                continue
            child.stop(_CHILD_STOP_TIMEOUT)  # its orphans (granian workers) go with it
            log.error(
                "%s (pid %s) exited with %s; restarting in %.1fs",
                child.name,
                child.pid,
                status,
                child.backoff,
            )
            due[child.name] = now + child.backoff
            child.backoff = min(child.backoff * 2, _RESTART_BACKOFF_MAX)
    return 0


def _demo_keys_file(settings: Settings) -> Path:
    """Where the demo seed writes its API keys: ``loyalty.demo.keys_file(settings)`` if defined."""
    if importlib.util.find_spec("loyalty.demo") is None:
        return settings.data_dir / "demo_keys.json"
    keys_file = getattr(importlib.import_module("loyalty.demo"), "keys_file", None)
    return Path(keys_file(settings)) if callable(keys_file) else settings.data_dir / "demo_keys.json"


def _demo_console_login(settings: Settings) -> str | None:
    """'EMAIL / PASSWORD (also ...)' of the demo's console admin, from the demo keys file."""
    try:
        console = json.loads(_demo_keys_file(settings).read_text()).get("console") or {}
    except (OSError, ValueError):
        return None
    if not console.get("email"):
        return None
    others = ", ".join(console.get("other_logins") or ())
    also = f"   (same password: {others})" if others else ""
    return f"{console['email']} / {console.get('password', '')}{also}"


def _print_banner(settings: Settings) -> None:
    base = f"http://{settings.api_host}:{settings.api_port}"
    lines = [
        "loyalty is running",
        f"  API        {base}",
        f"  API docs   {base}/schema",
        f"  database   {settings.database_url}",
        f"  redis      {settings.redis_url}",
    ]
    lines.insert(2, f"  console    {base}/console")
    if settings.demo:
        lines.append(f"  demo keys  {_demo_keys_file(settings)}")
        login = _demo_console_login(settings)
        if login:
            lines.append(f"  demo login {login}")
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
