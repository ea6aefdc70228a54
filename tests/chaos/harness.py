"""A real `loyalty serve` in a data dir of its own, an earn load against it, and the checks
the chaos suite runs after each outage. Everything stays on 127.0.0.1 and is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from loyalty.cli import session_members
from loyalty.embedded import DATABASE_NAME

# An answer must come within this (the API's own bounds are 2 s to connect or wait for a
# pooled connection and 2 s per statement; a request may meet one of each).
ANSWER_BOUND_SECONDS = 5.0
PROBLEM = "application/problem+json"
LOYALTY = str(Path(sys.executable).with_name("loyalty"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[psutil.Process]:
    """``pid``, its descendants, and the members of every session they lead."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    seen = {p.pid: p for p in procs}
    for proc in procs:
        with contextlib.suppress(OSError):
            if os.getsid(proc.pid) == proc.pid:
                seen.update({p.pid: p for p in session_members(proc.pid)})
    return list(seen.values())


@dataclass
class Serve:
    """`loyalty serve` as a subprocess of the test, on a free port."""

    data_dir: Path
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, *, data_dir: Path | None = None, extra_env: dict[str, str] | None = None) -> Serve:
        # Short path: the embedded Redis listens on a unix socket inside it.
        data_dir = data_dir or Path(tempfile.mkdtemp(prefix="lchaos-", dir="/tmp"))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
        env.update(
            {
                "LOYALTY_DATA_DIR": str(data_dir),
                "LOYALTY_API_PORT": str(port),
                "LOYALTY_API_WORKERS": "1",
                "LOYALTY_LOG_LEVEL": "WARNING",
                "LOYALTY_DEMO": "true",
            }
        )
        env.update(extra_env or {})
        return cls(data_dir=data_dir, env=env, port=port, log_path=data_dir / "serve.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [LOYALTY, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"loyalty serve not ready within {timeout}s\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def child(self, kind: str) -> psutil.Process | None:
        """The supervisor's current child: 'api' (the granian master) or 'worker'."""
        assert self.process is not None
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.Error:
            return None
        for proc in children:
            try:  # a zombie (the Redis the test stopped, say) has no command line
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if kind == "api" and "granian" in cmdline:
                return proc
            if kind == "worker" and "loyalty.cli worker" in cmdline:
                return proc
        return None

    def wait_child(self, kind: str, *, other_than: int | None, timeout: float = 60.0) -> psutil.Process:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.child(kind)
            if proc is not None and proc.pid != other_than:
                return proc
            time.sleep(0.05)
        raise AssertionError(f"no new {kind} child within {timeout}s\n{self.log_tail()}")

    def all_processes(self) -> list[psutil.Process]:
        assert self.process is not None
        return tree(self.process.pid)

    def stop(self, timeout: float = 30.0) -> tuple[float, list[psutil.Process]]:
        """SIGTERM the supervisor; answers how long it took and what of its tree survived."""
        assert self.process is not None
        before = self.all_processes()
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        took = time.monotonic() - started
        time.sleep(0.3)
        survivors = []
        for proc in before:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    # Embedded servers are shared with other users of the data dir by design.
                    name = " ".join(proc.cmdline())
                    if "redis-server" not in name and "postgres" not in name:
                        survivors.append(proc)
        return took, survivors

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LOYALTY, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def database_url(self) -> str:
        return f"postgresql://postgres:@/{DATABASE_NAME}?host={self.data_dir / 'pg'}"

    def keys(self) -> dict[str, str]:
        return dict(json.loads((self.data_dir / "demo_keys.json").read_text())["keys"])

    def cleanup(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class Answer:
    started: float
    latency: float
    status: int | None  # None: no answer (connection refused or reset while the API restarts)
    content_type: str = ""
    code: str = ""
    retry_after: str | None = None
    key: str = ""
    error: str = ""


@dataclass
class Load:
    """A small, bounded earn load: ``clients`` loops, each at most one request in flight and
    ``pause`` seconds between requests, plus a reassess probe (needs Redis) every 2 s."""

    base_url: str
    key: str
    members: list[str]
    clients: int = 4
    pause: float = 0.01
    answers: list[Answer] = field(default_factory=list)
    probes: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.started >= t]

    def probes_since(self, t: float) -> list[Answer]:
        return [a for a in list(self.probes) if a.started >= t]

    async def _run(self) -> None:
        # The client's own timeout is well past the bound, so a hang shows as a long latency.
        timeout = httpx.Timeout(ANSWER_BOUND_SECONDS * 3, connect=1.0)
        limits = httpx.Limits(max_connections=self.clients + 1)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, limits=limits, headers=headers
        ) as c:
            await asyncio.gather(*(self._client(c, i) for i in range(self.clients)), self._probe(c))

    async def _call(self, c: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Answer:
        started = time.monotonic()
        key = kw.pop("key", "")
        try:
            r = await c.request(method, path, **kw)
        except httpx.TransportError as exc:
            latency = time.monotonic() - started
            # Refused (the API is restarting) or cut off mid-request (it was killed): no answer.
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) and latency > 1.5 else "no_answer"
            return Answer(started, latency, None, key=key, error=kind)
        code = ""
        ctype = r.headers.get("content-type", "")
        if ctype.startswith(PROBLEM):
            with contextlib.suppress(ValueError):
                code = str(r.json().get("code", ""))
        return Answer(
            started, time.monotonic() - started, r.status_code, ctype, code, r.headers.get("retry-after"), key
        )

    async def _client(self, c: httpx.AsyncClient, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            key = f"chaos-{uuid.uuid4().hex}"
            member = self.members[(index + n) % len(self.members)]
            body = {"member_id": member, "budget": "orders", "points": 1, "reference": key}
            answer = await self._call(
                c, "POST", "/v1/earn", json=body, headers={"Idempotency-Key": key}, key=key
            )
            self.answers.append(answer)
            n += 1
            await asyncio.sleep(self.pause if answer.status is not None else 0.1)

    async def _probe(self, c: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            self.probes.append(await self._call(c, "POST", "/v1/tiers/reassess"))
            await asyncio.sleep(2)


@dataclass
class Figures:
    name: str
    requests: int
    ok: int
    unavailable: int
    no_answer: int
    max_latency: float
    recovery: float | None

    def line(self) -> str:
        recovery = f"{self.recovery:.2f}s" if self.recovery is not None else "-"
        return (
            f"{self.name:<16} requests {self.requests:>6}  2xx {self.ok:>6}  503 {self.unavailable:>5}  "
            f"no answer {self.no_answer:>4}  max latency {self.max_latency:5.2f}s  recovery {recovery}"
        )


def check_answers(
    name: str, answers: list[Answer], *, recovery: float | None, allow_no_answer: bool
) -> Figures:
    """Every answer is a 2xx or a 503 problem with Retry-After, within the bound; never a 500."""
    bad = []
    for a in answers:
        if a.status is None:
            if a.error == "timeout" or not allow_no_answer:
                bad.append(a)
        elif (
            200 <= a.status < 300 or a.status == 503 and a.content_type.startswith(PROBLEM) and a.retry_after
        ):
            pass
        else:
            bad.append(a)
    slow = [a for a in answers if a.status is not None and a.latency > ANSWER_BOUND_SECONDS]
    answered = [a.latency for a in answers if a.status is not None]
    figures = Figures(
        name=name,
        requests=len(answers),
        ok=sum(1 for a in answers if a.status is not None and 200 <= a.status < 300),
        unavailable=sum(1 for a in answers if a.status == 503),
        no_answer=sum(1 for a in answers if a.status is None),
        max_latency=max(answered, default=0.0),
        recovery=recovery,
    )
    print(figures.line(), flush=True)
    assert not bad, f"{name}: {len(bad)} answers neither 2xx nor 503 problem: {bad[:5]}"
    assert not slow, f"{name}: {len(slow)} answers slower than {ANSWER_BOUND_SECONDS}s: {slow[:5]}"
    return figures


async def audit(database_url: str, acknowledged: list[str]) -> None:
    """Every earn that got a 2xx is in the ledger, exactly once (by its reference)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT reference, count(*) AS n FROM transactions WHERE reference = ANY($1::text[]) GROUP BY 1",
            acknowledged,
        )
    finally:
        await conn.close()
    counts = {r["reference"]: r["n"] for r in rows}
    missing = [k for k in acknowledged if k not in counts]
    doubled = {k: n for k, n in counts.items() if n != 1}
    assert not missing, f"{len(missing)} acknowledged earns are not in the ledger: {missing[:5]}"
    assert not doubled, f"acknowledged earns written more than once: {list(doubled.items())[:5]}"


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> float:
    """Seconds until ``predicate()`` was true; AssertionError after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s")


@dataclass(frozen=True)
class Plan:
    kills: int
    pg_outage: float
    redis_outage: float


@dataclass
class Rig:
    serve: Serve
    load: Load
    operator_key: str
