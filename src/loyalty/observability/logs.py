"""One logging set-up for the API, the worker and the CLI: structlog renders every record,
stdlib ``logging`` included (granian's, arq's, alembic's), as JSON or for a terminal.

The request id lives in one context variable: set once per request at the edge, read by a
processor only when a line is actually logged.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from contextvars import ContextVar
from typing import Any

import structlog

REQUEST_ID_HEADER = b"x-request-id"
# What we accept from a client: short, printable, no spaces (it ends up in every log line).
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@+=/-]{1,128}")
FORMATS = ("auto", "json", "console")

request_id: ContextVar[str | None] = ContextVar("loyalty_request_id", default=None)


def new_request_id() -> str:
    return secrets.token_hex(16)


def accept_request_id(raw: bytes | None) -> str:
    """The client's X-Request-ID when it is well-formed, else a fresh one."""
    if raw is not None and _VALID_REQUEST_ID.fullmatch(raw):
        return raw.decode("ascii")
    return new_request_id()


def _add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    rid = request_id.get()
    if rid is not None and "request_id" not in event:
        event["request_id"] = rid
    return event


def _renderer(fmt: str) -> Any:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.processors.JSONRenderer()


def resolve_format(setting: str, default: str) -> str:
    """``auto``: the caller's default (JSON for serve/worker), console for a terminal otherwise."""
    if setting not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {setting!r}")
    if setting != "auto":
        return setting
    if default == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return default


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging through one renderer on stderr. Safe to call again."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if fmt == "json" else _keep,  # type: ignore[list-item]
            _renderer(fmt),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    # Ours from an earlier call, and plain stream handlers (basicConfig's) go: one renderer for
    # every line. Subclasses (a test runner's capture handler) stay.
    for old in list(root.handlers):
        if getattr(old, "_loyalty", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    handler._loyalty = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # granian installs its own handlers on its loggers; send their records through ours.
    for name in ("granian", "_granian", "granian.access", "granian.server", "arq"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _keep(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return event


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
