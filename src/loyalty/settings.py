"""One frozen, typed settings object read from ``LOYALTY_*`` variables, only when asked."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "LOYALTY_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".loyalty")
    # Signs member tokens; `ensure_secret_key` fills it from data_dir when unset.
    secret_key: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 2
    worker_enabled: bool = True
    log_level: str = "INFO"
    db_pool_size: int = 10
    # The API's bounds on PostgreSQL: opening a connection and waiting for a pooled one
    # (db_timeout), and each statement (db_command_timeout). Past them the request answers 503.
    db_timeout_seconds: float = 2.0
    db_command_timeout_seconds: float = 2.0
    # The bound on a fast route's whole database part (posting, event, checkout): its queue,
    # pool, connect and statement waits together. Unset: db_timeout + db_command_timeout.
    db_deadline: float | None = None
    # The API's bound on each Redis call (connect and read); past it, 503.
    redis_timeout_seconds: float = 1.0
    member_token_ttl_seconds: int = 3600
    key_cache_ttl_seconds: int = 10
    # Seed a demo programme when the database holds none.
    demo: bool = True
    # Browser origins allowed to call the API (CORS); empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    # Set when clients reach the API over https (directly or through a proxy): adds HSTS.
    https: bool = False
    # Fixed-window rate limits in Redis, per credential and per client IP; 0 turns one off.
    rate_limit_window_seconds: int = 10
    rate_limit_per_credential: int = 20_000
    rate_limit_per_ip: int = 40_000
    # Failed authentications per client IP within the window before it gets 429s.
    auth_failure_limit: int = 20
    auth_failure_window_seconds: int = 60
    # Webhook endpoints on private, loopback or link-local addresses: for a deployment whose
    # receivers live on its own network. Programme admins cannot change it.
    webhook_allow_private_targets: bool = False
    # Observability (docs/observability.md). auto: JSON for serve/worker, console in a terminal.
    log_format: str = "auto"
    # /metrics: with a token, only `Authorization: Bearer <token>`; without, only loopback clients.
    metrics_token: str | None = None
    # The edge middleware (request metrics, request ids) and the ledger counters; off only to
    # measure what they cost.
    metrics_enabled: bool = True
    # One log line per request (off by default: the hot paths log nothing when all is well).
    access_log: bool = False
    # OpenTelemetry tracing (the [otel] extra); the exporter reads the standard OTEL_* variables.
    otel_enabled: bool = False
    # A standalone `loyalty worker` serves its metrics on this loopback port (0: off). Under
    # `loyalty serve` the worker's metrics are in the API's /metrics.
    worker_metrics_port: int = 0
    # The body limit of the CSV import routes only (every other route keeps edge.MAX_BODY).
    import_max_bytes: int = 64 * 1024 * 1024
    # A console session that sees no request for this long ends (the operator logs in again).
    console_idle_minutes: int = 30
    # Console logins tried from one client address per 5 minutes, whatever the accounts, before
    # 429 (0: no limit; the per-account lockout holds either way).
    console_login_limit: int = 30
    # Group commit of the HTTP single postings (docs/group-commit.md): off sends each one as its
    # own call. Flushers: batches under way at once; max batch: postings per call.
    group_commit: bool = True
    group_commit_flushers: int = 3
    group_commit_max_batch: int = 24

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        env = _Env(environ)
        return cls(
            database_url=env.str_or_none("DATABASE_URL"),
            redis_url=env.str_or_none("REDIS_URL"),
            data_dir=Path(env.text("DATA_DIR", ".loyalty")),
            secret_key=env.str_or_none("SECRET_KEY"),
            api_host=env.text("API_HOST", "127.0.0.1"),
            api_port=env.integer("API_PORT", 8000),
            api_workers=env.integer("API_WORKERS", 2),
            worker_enabled=env.boolean("WORKER_ENABLED", True),
            log_level=env.text("LOG_LEVEL", "INFO").upper(),
            db_pool_size=env.integer("DB_POOL_SIZE", 10),
            db_timeout_seconds=env.number("DB_TIMEOUT_SECONDS", 2.0),
            db_command_timeout_seconds=env.number("DB_COMMAND_TIMEOUT_SECONDS", 2.0),
            db_deadline=env.number("DB_DEADLINE_SECONDS", 0.0) or None,
            redis_timeout_seconds=env.number("REDIS_TIMEOUT_SECONDS", 1.0),
            member_token_ttl_seconds=env.integer("MEMBER_TOKEN_TTL_SECONDS", 3600),
            key_cache_ttl_seconds=env.integer("KEY_CACHE_TTL_SECONDS", 10),
            demo=env.boolean("DEMO", True),
            cors_origins=env.items("CORS_ORIGINS"),
            https=env.boolean("HTTPS", False),
            rate_limit_window_seconds=env.integer("RATE_LIMIT_WINDOW_SECONDS", 10),
            rate_limit_per_credential=env.integer("RATE_LIMIT_PER_CREDENTIAL", 20_000),
            rate_limit_per_ip=env.integer("RATE_LIMIT_PER_IP", 40_000),
            auth_failure_limit=env.integer("AUTH_FAILURE_LIMIT", 20),
            auth_failure_window_seconds=env.integer("AUTH_FAILURE_WINDOW_SECONDS", 60),
            webhook_allow_private_targets=env.boolean("WEBHOOK_ALLOW_PRIVATE_TARGETS", False),
            log_format=env.text("LOG_FORMAT", "auto").lower(),
            metrics_token=env.str_or_none("METRICS_TOKEN"),
            metrics_enabled=env.boolean("METRICS_ENABLED", True),
            access_log=env.boolean("ACCESS_LOG", False),
            otel_enabled=env.boolean("OTEL_ENABLED", False),
            worker_metrics_port=env.integer("WORKER_METRICS_PORT", 0),
            import_max_bytes=env.integer("IMPORT_MAX_BYTES", 64 * 1024 * 1024),
            console_idle_minutes=env.integer("CONSOLE_IDLE_MINUTES", 30),
            console_login_limit=env.integer("CONSOLE_LOGIN_LIMIT", 30),
            group_commit=env.boolean("GROUP_COMMIT", True),
            group_commit_flushers=env.integer("GROUP_COMMIT_FLUSHERS", 3),
            group_commit_max_batch=env.integer("GROUP_COMMIT_MAX_BATCH", 24),
        )

    @property
    def db_deadline_seconds(self) -> float:
        return self.db_deadline or self.db_timeout_seconds + self.db_command_timeout_seconds

    def with_urls(self, database_url: str | None, redis_url: str | None) -> Settings:
        return dataclasses.replace(self, database_url=database_url, redis_url=redis_url)

    def to_env(self) -> dict[str, str]:
        """The ``LOYALTY_*`` variables that rebuild these settings in a child process."""
        values = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "DATA_DIR": str(self.data_dir),
            "SECRET_KEY": self.secret_key,
            "API_HOST": self.api_host,
            "API_PORT": str(self.api_port),
            "API_WORKERS": str(self.api_workers),
            "WORKER_ENABLED": str(self.worker_enabled).lower(),
            "LOG_LEVEL": self.log_level,
            "DB_POOL_SIZE": str(self.db_pool_size),
            "DB_TIMEOUT_SECONDS": str(self.db_timeout_seconds),
            "DB_COMMAND_TIMEOUT_SECONDS": str(self.db_command_timeout_seconds),
            **({"DB_DEADLINE_SECONDS": str(self.db_deadline)} if self.db_deadline else {}),
            "REDIS_TIMEOUT_SECONDS": str(self.redis_timeout_seconds),
            "MEMBER_TOKEN_TTL_SECONDS": str(self.member_token_ttl_seconds),
            "KEY_CACHE_TTL_SECONDS": str(self.key_cache_ttl_seconds),
            "DEMO": str(self.demo).lower(),
            "CORS_ORIGINS": ",".join(self.cors_origins),
            "HTTPS": str(self.https).lower(),
            "RATE_LIMIT_WINDOW_SECONDS": str(self.rate_limit_window_seconds),
            "RATE_LIMIT_PER_CREDENTIAL": str(self.rate_limit_per_credential),
            "RATE_LIMIT_PER_IP": str(self.rate_limit_per_ip),
            "AUTH_FAILURE_LIMIT": str(self.auth_failure_limit),
            "AUTH_FAILURE_WINDOW_SECONDS": str(self.auth_failure_window_seconds),
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": str(self.webhook_allow_private_targets).lower(),
            "LOG_FORMAT": self.log_format,
            "METRICS_TOKEN": self.metrics_token,
            "METRICS_ENABLED": str(self.metrics_enabled).lower(),
            "ACCESS_LOG": str(self.access_log).lower(),
            "OTEL_ENABLED": str(self.otel_enabled).lower(),
            "WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "IMPORT_MAX_BYTES": str(self.import_max_bytes),
            "CONSOLE_IDLE_MINUTES": str(self.console_idle_minutes),
            "CONSOLE_LOGIN_LIMIT": str(self.console_login_limit),
            "GROUP_COMMIT": str(self.group_commit).lower(),
            "GROUP_COMMIT_FLUSHERS": str(self.group_commit_flushers),
            "GROUP_COMMIT_MAX_BATCH": str(self.group_commit_max_batch),
        }
        return {ENV_PREFIX + key: value for key, value in values.items() if value is not None}


def ensure_secret_key(settings: Settings) -> Settings:
    """Fill ``secret_key`` from ``data_dir/secret_key``, creating it (mode 0600) on first use.

    Keeping it on disk means member tokens survive a restart of ``make serve``.
    """
    if settings.secret_key is not None:
        return settings
    path = settings.data_dir / "secret_key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(path, secrets.token_urlsafe(32))
    return dataclasses.replace(settings, secret_key=path.read_text().strip())


def _write_private(path: Path, text: str) -> None:
    # O_EXCL: if two processes race, the loser keeps the winner's key instead of overwriting it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


class _Env:
    """Typed reads of prefixed variables; a bad value names the variable in the error."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def str_or_none(self, name: str) -> str | None:
        value = self._environ.get(ENV_PREFIX + name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.str_or_none(name) or default

    def integer(self, name: str, default: int) -> int:
        raw = self.str_or_none(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None

    def number(self, name: str, default: float) -> float:
        raw = self.str_or_none(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None
        if not value > 0:
            raise ValueError(f"{ENV_PREFIX}{name} must be greater than 0, got {raw!r}")
        return value

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list; blanks dropped."""
        raw = self.str_or_none(name) or ""
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.str_or_none(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{ENV_PREFIX}{name} must be a boolean (true/false), got {raw!r}")
