"""Where the CPU went during a measured window: client, granian, PostgreSQL, anything else.

On two cores the load generator, the API and PostgreSQL compete (and so does whatever else runs
on the machine); these shares say which one a number was limited by.
"""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass

import psutil

# Backends come and go (pgbench disconnects before the window is read): sampling keeps the
# last CPU reading of each process, which is at most this stale when it exits.
_SAMPLE_EVERY = 0.25


@dataclass
class CpuShare:
    """Cores used on average (1.0 = one core busy) during the window."""

    total: float
    client: float
    api: float
    postgres: float
    other: float  # everything else on the machine: other users' work, steal, the kernel


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _tree(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _client_seconds() -> float:
    # This process (the HTTP load generator) plus reaped children (pgbench, once it exits).
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.system + getattr(times, "irq", 0) + getattr(times, "softirq", 0))


class _TreeSampler(threading.Thread):
    """The last CPU reading of every process of a tree, refreshed until stopped."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._done = threading.Event()
        self.sample(initial=True)

    def sample(self, initial: bool = False) -> None:
        for process in _tree(self.pid):
            seconds = _cpu_seconds(process)
            if seconds is None:
                continue
            if initial:
                self.first[process.pid] = seconds
            self.last[process.pid] = seconds

    def run(self) -> None:
        while not self._done.wait(_SAMPLE_EVERY):
            self.sample()

    def finish(self) -> float:
        self._done.set()
        self.join()
        self.sample()
        # Processes born in the window (new backends) count from zero.
        return sum(seconds - self.first.get(pid, 0.0) for pid, seconds in self.last.items())


class CpuProbe:
    def __init__(self, *, api_pid: int | None, postmaster_pid: int | None) -> None:
        self.api_pid = api_pid
        self.postmaster_pid = postmaster_pid
        self._samplers: tuple[_TreeSampler, _TreeSampler] | None = None
        self._started = 0.0
        self._total = 0.0
        self._client = 0.0

    def start(self) -> None:
        self._samplers = (_TreeSampler(self.api_pid), _TreeSampler(self.postmaster_pid))
        for sampler in self._samplers:
            sampler.start()
        self._started = time.monotonic()
        self._total = _busy_seconds()
        self._client = _client_seconds()

    def stop(self) -> CpuShare:
        assert self._samplers is not None, "start() first"
        elapsed = max(time.monotonic() - self._started, 1e-9)
        total = (_busy_seconds() - self._total) / elapsed
        client = (_client_seconds() - self._client) / elapsed
        api, postgres = (sampler.finish() / elapsed for sampler in self._samplers)
        self._samplers = None
        return CpuShare(
            total=total,
            client=client,
            api=api,
            postgres=postgres,
            other=max(0.0, total - client - api - postgres),
        )
