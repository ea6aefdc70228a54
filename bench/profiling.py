"""A sampling profile of the API's worker processes during a workload (``--profile WORKLOAD``).

py-spy (``pip install py-spy``, in the dev extras) attaches to granian and its workers, samples
their Python stacks without pausing them, and writes a speedscope file (open it at
https://www.speedscope.app or with ``speedscope FILE``). The summary printed with the results
says where the workers' CPU went: by package (loyalty, litestar, asyncpg, ...) and by function,
as the share of samples in which a function was running (self) or on the stack (total).
Idle samples (a worker waiting in its event loop) are not recorded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_RATE = 100  # per second and per thread
TOP = 15
_ATTACH_S = 1.0
_STOP_TIMEOUT_S = 60.0


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install 'py-spy==0.4.3' (it is in the dev extras)")
    return found


class Profiler:
    """``py-spy record`` of a process tree, from ``start()`` until ``stop()``."""

    def __init__(self, pid: int, output: Path, rate: int = SAMPLE_RATE) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self._process: asyncio.subprocess.Process | None = None

    def command(self) -> list[str]:
        return [
            py_spy(), "record",
            "--pid", str(self.pid),
            "--subprocesses",  # granian's workers are children of the pid we know
            "--nonblocking",  # do not pause the workers for each sample
            "--rate", str(self.rate),
            "--format", "speedscope",
            "--output", str(self.output),
        ]  # fmt: skip

    async def start(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            *self.command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(_ATTACH_S)
        if self._process.returncode is not None:
            _, err = await self._process.communicate()
            raise RuntimeError(f"py-spy exited at once ({self._process.returncode}): {err.decode()[-800:]}")

    async def stop(self) -> None:
        """Stop sampling; py-spy writes the file on SIGINT, like on Ctrl-C."""
        assert self._process is not None, "start() first"
        process, self._process = self._process, None
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(process.communicate(), timeout=_STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError("py-spy did not stop within a minute") from None
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote no profile ({process.returncode}): {err.decode()[-800:]}")


@dataclass
class Summary:
    samples: int
    # package -> share of samples running in it (self time)
    by_package: dict[str, float] = field(default_factory=dict)
    # [function, share] by self time and by total (on the stack) time, largest first
    top_self: list[tuple[str, float]] = field(default_factory=list)
    top_total: list[tuple[str, float]] = field(default_factory=list)


def package(file: str) -> str:
    """Which package a frame's file belongs to: loyalty, a site-package, the standard library."""
    path = file.replace("\\", "/")
    if "/site-packages/" in path:
        rest = path.split("/site-packages/", 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py")
    if "/src/loyalty/" in path or path.startswith("src/loyalty/"):
        return "loyalty"
    if "/bench/" in path or path.startswith("bench/"):
        return "bench"
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        module = rest.split("/", 1)[0].removesuffix(".py")
        return f"stdlib {module}" if module == "asyncio" else "stdlib"
    return "other" if path else "native"


def _short(file: str) -> str:
    path = file.replace("\\", "/")
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-1] if "/" in path else path


NATIVE = "(native: no Python frame)"
# Frames of the server and the event loop: on every stack, so their total time says nothing.
_PLUMBING = {"stdlib", "stdlib asyncio", "granian", "click", "uvloop", "native", "other"}


def summarize(path: Path, top: int = TOP) -> Summary:
    """Self and total shares per function and per package from a py-spy speedscope file.

    py-spy puts a "process ..." frame at the root of each stack (--subprocesses); a sample with
    nothing above it is a thread running native code with no Python frame on its stack (granian's
    Rust threads), counted as NATIVE. Self time of a Python function includes the native code it
    calls (uvloop's loop under granian's worker, asyncpg's protocol, msgspec)."""
    data: dict[str, Any] = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = [f"{f['name']} ({_short(f.get('file') or '')})" for f in frames]
    packages = [package(f.get("file") or "") for f in frames]
    roots = {i for i, f in enumerate(frames) if not f.get("file") and str(f["name"]).startswith("process ")}
    self_weight: Counter[str] = Counter()
    total_weight: Counter[str] = Counter()
    package_weight: Counter[str] = Counter()
    samples = 0
    weight_sum = 0.0
    for profile in data.get("profiles", []):
        stacks = profile.get("samples", [])
        weights = profile.get("weights") or [1.0] * len(stacks)
        for stack, weight in zip(stacks, weights, strict=False):
            stack = [i for i in stack if i not in roots]
            samples += 1
            weight_sum += weight
            if not stack:
                self_weight[NATIVE] += weight
                package_weight["native"] += weight
                continue
            leaf = stack[-1]
            self_weight[names[leaf]] += weight
            package_weight[packages[leaf]] += weight
            for name in {names[i] for i in stack if packages[i] not in _PLUMBING}:
                total_weight[name] += weight
    if not weight_sum:
        return Summary(samples=0)

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, weight / weight_sum) for name, weight in counter.most_common(top)]

    return Summary(
        samples=samples,
        by_package={name: weight / weight_sum for name, weight in package_weight.most_common()},
        top_self=shares(self_weight),
        top_total=shares(total_weight),
    )


def render(summary: Summary, top: int = TOP) -> list[str]:
    if not summary.samples:
        return ["  no samples (was the workload running?)"]
    lines = [
        f"  {summary.samples} samples; by package (self): "
        + ", ".join(f"{name} {share:.0%}" for name, share in summary.by_package.items() if share >= 0.01)
    ]
    lines.append(f"  top {top} functions by self time:")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary.top_self[:top]]
    lines.append(f"  top {top} functions of loyalty and its libraries by total time (on the stack):")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary.top_total[:top]]
    return lines
