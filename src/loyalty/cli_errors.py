"""What the `loyalty` command prints when a command fails: one line, never a traceback.

An error a person can act on (a refused request, a bad setting, a missing file, a server that
does not answer) is named in its own words. Anything else is a bug: one line says so and how to
see the traceback (LOYALTY_LOG_LEVEL=DEBUG logs it).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

TRACEBACK_HINT = "LOYALTY_LOG_LEVEL=DEBUG shows the traceback"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The error, then what it wraps: SQLAlchemy's ``.orig``, explicit ``raise ... from``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup) and len(current.exceptions) == 1:
            current = current.exceptions[0]
            continue
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def _text(exc: BaseException) -> str:
    words = " ".join(str(exc).split())
    return words or type(exc).__name__


def _known(exc: BaseException) -> str | None:
    import asyncpg
    import redis.exceptions
    from alembic.util import CommandError

    from loyalty.errors import DomainError

    if isinstance(exc, DomainError):
        return _text(exc)
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"database: {_text(exc)}"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return f"redis: {_text(exc)}"
    if isinstance(exc, CommandError):
        return f"migrations: {_text(exc)}"
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror) or (
        isinstance(exc, OSError) and exc.filename is None and "connect" in str(exc).lower()
    ):
        return f"cannot connect: {_text(exc)}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or _text(exc)}"
    if isinstance(exc, FileNotFoundError | PermissionError | ValueError):
        return _text(exc)
    if isinstance(exc, subprocess.CalledProcessError):
        program = exc.cmd[0] if isinstance(exc.cmd, list | tuple) else str(exc.cmd).split()[0]
        return f"{program} exited with code {exc.returncode}"
    return None


def describe(exc: BaseException) -> str:
    """One line for ``exc``, without the 'error: ' prefix."""
    for cause in _causes(exc):
        line = _known(cause)
        if line is not None:
            return line
    return f"unexpected {type(exc).__name__}: {_text(exc)} ({TRACEBACK_HINT})"
