"""A minimal keep-alive HTTP/1.1 load generator on asyncio protocols.

The client shares two cores with the server and PostgreSQL, so it must cost little per
request: requests are pre-encoded bytes, responses are parsed only as far as the status line
and Content-Length, and no HTTP library sits in the hot loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.cpu import CpuProbe, CpuShare

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"


class ConnectionClosed(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body_start = -1
        self._total = -1
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionClosed(str(exc) if exc else "closed by server"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._total < 0 and not self._parse_head():
            return
        if len(self._buffer) >= self._total:
            body = bytes(self._buffer[self._body_start : self._total])
            del self._buffer[: self._total]
            self._total = -1
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result((self._status, body))

    def _parse_head(self) -> bool:
        end = self._buffer.find(_HEADER_END)
        if end < 0:
            return False
        head = bytes(self._buffer[:end]).lower()
        self._status = int(head[9:12])
        at = head.find(_CONTENT_LENGTH)
        if at < 0:
            # Every response of a Litestar app with a bytes/JSON body carries a length.
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + len(_CONTENT_LENGTH) : line_end if line_end > 0 else len(head)])
        self._body_start = end + len(_HEADER_END)
        self._total = self._body_start + length
        return True

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send pre-encoded request bytes; answer (status, body)."""
        if self._transport is None:
            raise ConnectionClosed("not connected")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(payload)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def connect(host: str, port: int) -> HttpConnection:
    _, protocol = await asyncio.get_running_loop().create_connection(HttpConnection, host, port)
    return protocol


def encode_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Recorder:
    """Latencies (ns) per step and statuses of what completes inside the measured window."""

    window_start: float = float("inf")
    window_end: float = float("inf")
    ops: int = 0
    latencies: dict[str, list[int]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)

    def in_window(self, started: float, ended: float) -> bool:
        return started >= self.window_start and ended <= self.window_end

    def step(self, name: str, status: int, started_ns: int, ended_ns: int) -> None:
        if self.in_window(started_ns / 1e9, ended_ns / 1e9):
            self.latencies.setdefault(name, []).append(ended_ns - started_ns)
            self.statuses[str(status)] += 1

    def failure(self, kind: str) -> None:
        if self.window_start <= time.perf_counter() <= self.window_end:
            self.statuses[kind] += 1

    def op_done(self, started_ns: int, ended_ns: int) -> None:
        if self.in_window(started_ns / 1e9, ended_ns / 1e9):
            self.ops += 1


# An operation: one or more requests on one connection, recorded in the Recorder.
Operation = Callable[[HttpConnection, Recorder], Awaitable[None]]


@dataclass
class LoadResult:
    seconds: float
    ops: int
    latencies: dict[str, list[int]]
    statuses: dict[str, int]
    cpu: CpuShare


async def drive(
    host: str,
    port: int,
    operation: Operation,
    *,
    clients: int,
    warmup: float,
    duration: float,
    probe: CpuProbe,
) -> LoadResult:
    """Run ``clients`` closed loops of ``operation`` for warmup + duration; measure the second part."""
    connections = [await connect(host, port) for _ in range(clients)]
    recorder = Recorder()
    stop = asyncio.Event()

    async def loop(conn: HttpConnection) -> None:
        while not stop.is_set():
            try:
                await operation(conn, recorder)
            except (ConnectionClosed, ConnectionError):
                recorder.failure("connection")
                conn.close()
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)
                conn = await connect(host, port)
                connections.append(conn)

    tasks = [asyncio.create_task(loop(conn)) for conn in connections]
    try:
        await asyncio.sleep(warmup)
        probe.start()
        recorder.window_start = time.perf_counter()
        recorder.window_end = recorder.window_start + duration
        await asyncio.sleep(duration)
        cpu = probe.stop()
        stop.set()
        # In-flight requests finish (and fall outside the window) so the server is idle after.
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        for conn in connections:
            conn.close()
    return LoadResult(
        seconds=duration,
        ops=recorder.ops,
        latencies=recorder.latencies,
        statuses=dict(recorder.statuses),
        cpu=cpu,
    )
