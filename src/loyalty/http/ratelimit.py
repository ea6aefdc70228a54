"""Rate limits in Redis: per credential, per client IP, and failed authentications per IP.

One ASGI wrapper outside routing. Fixed windows, counted locally and synced to Redis ten
times a second in one pipelined round trip, so a request never waits for Redis. Redis is an
aid here, never a dependency: when it is slow or gone the limits fail open at once (short socket
timeouts), and a circuit stops asking it for a few seconds, so the checkout keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

if TYPE_CHECKING:
    from litestar import Litestar

    from loyalty.settings import Settings

log = logging.getLogger("loyalty.ratelimit")
# Paths a load balancer or scraper calls: never limited.
EXEMPT_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
REDIS_TIMEOUT_SECONDS = 0.25
CIRCUIT_OPEN_SECONDS = 5.0
SYNC_SECONDS = 0.1
_GOOD_CREDENTIALS = 10_000
_EXPIRED = b'"token_expired"'


@dataclass(frozen=True, kw_only=True)
class Limits:
    window_seconds: int = 10
    per_credential: int = 20_000
    per_ip: int = 40_000
    auth_failures: int = 20
    auth_failure_window_seconds: int = 60

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            window_seconds=max(1, settings.rate_limit_window_seconds),
            per_credential=settings.rate_limit_per_credential,
            per_ip=settings.rate_limit_per_ip,
            auth_failures=settings.auth_failure_limit,
            auth_failure_window_seconds=max(1, settings.auth_failure_window_seconds),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    code: str
    detail: str
    retry_after: int


def verdict(
    limits: Limits,
    *,
    now: float,
    ip_count: int,
    credential_count: int,
    failures: int,
    known_good: bool,
) -> Verdict | None:
    """Pure decision from the counters: None lets the request through."""
    if limits.auth_failures and failures >= limits.auth_failures and not known_good:
        window = limits.auth_failure_window_seconds
        return Verdict(
            "too_many_failed_authentications",
            f"Too many failed authentications from this address; try again in {window} s at most.",
            _retry_after(now, window),
        )
    window = limits.window_seconds
    if limits.per_credential and credential_count > limits.per_credential:
        return Verdict(
            "rate_limited",
            f"More than {limits.per_credential} requests in {window} s with this credential.",
            _retry_after(now, window),
        )
    if limits.per_ip and ip_count > limits.per_ip:
        return Verdict(
            "rate_limited",
            f"More than {limits.per_ip} requests in {window} s from this address.",
            _retry_after(now, window),
        )
    return None


def _retry_after(now: float, window: int) -> int:
    """Seconds until the current fixed window ends (at least 1)."""
    return max(1, int(window - now % window + 0.999))


class RateLimiter:
    """ASGI wrapper. Requests are counted locally; a background sync every ``SYNC_SECONDS``
    adds the local counts to Redis in one pipeline (INCRBY+EXPIRE per counter, GET of the
    failure counters of the addresses seen) and learns the totals of every process. A
    request costs a few dict operations, never a Redis round trip; the price is that other
    processes' traffic is seen up to ``SYNC_SECONDS`` late. The Redis client is its own,
    with short timeouts and no retries."""

    def __init__(self, app: Any, *, limits: Limits, redis_url: str) -> None:
        self.app = app
        self.limits = limits
        self.redis_url = redis_url
        self._redis: Redis | None = None
        self._open_until = 0.0
        self._synced = False
        self._sync_task: asyncio.Task[None] | None = None
        # The event loop that the sync task and the Redis client belong to. A process normally
        # has one; tests and embedders that serve the same app from several loops get a fresh
        # task and client in each, and never await one loop's task from another.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        # Counter -> count added here since the last sync; counter -> total at the last sync.
        self._pending: dict[str, int] = {}
        # Counts on their way to Redis: between a sync's send and its answer they are in
        # neither _known nor _pending, and an estimate without them would drop for a moment.
        self._sending: dict[str, int] = {}
        self._known: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._failure_keys: set[str] = set()
        # Digests of credentials that recently authenticated: they are not locked out with
        # their address when someone else behind it fails (a shop's checkout behind a NAT).
        self._good: OrderedDict[bytes, None] = OrderedDict()

    def _client(self) -> Redis:
        # Created on first use, inside the serving event loop.
        if self._redis is None:
            self._redis = Redis.from_url(
                self.redis_url,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                retry_on_timeout=False,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        return self._redis

    async def aclose(self) -> None:
        task, redis, loop = self._sync_task, self._redis, self._loop
        self._sync_task, self._redis, self._loop = None, None, None
        self._synced = False
        self._stop.set()
        if loop is not asyncio.get_running_loop():
            # Started in another event loop: stop it there (if that loop still runs); awaiting
            # it from here would wait forever. Its Redis connections go with that loop.
            if task is not None and loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
            return
        if task is not None:
            task.cancel()
            # Bounded: shutting down never waits on Redis for longer than one sync could take.
            await asyncio.wait({task}, timeout=REDIS_TIMEOUT_SECONDS * 2 + 1)
        if redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await redis.aclose()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self._loop is not asyncio.get_running_loop():  # set with the sync task, cleared with it
            # The first request of this event loop: learn whether Redis is there, then sync in
            # the background.
            await self.aclose()
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            # A fresh context: the task outlives this request, and its log lines are not its.
            self._sync_task = asyncio.create_task(
                self._sync_loop(self._stop), name="rate-limit-sync", context=contextvars.Context()
            )
            await self._sync()
        ip = scope["client"][0] if scope.get("client") else "-"
        credential = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                credential = value
                break
        digest = hashlib.sha256(credential).digest()[:16] if credential else b""
        now = time.time()
        window = self.limits.window_seconds
        slot = int(now // window)
        ip_key = f"rl:ip:{ip}:{slot}"
        fail_key = f"rl:af:{ip}:{int(now // self.limits.auth_failure_window_seconds)}"
        ip_count = self._add(ip_key, now + window + 1)
        credential_count = self._add(f"rl:c:{digest.hex()}:{slot}", now + window + 1) if digest else 0
        if self._synced:
            self._failure_keys.add(fail_key)
            blocked = verdict(
                self.limits,
                now=now,
                ip_count=ip_count,
                credential_count=credential_count,
                failures=self._estimate(fail_key),
                known_good=digest in self._good,
            )
            if blocked is not None:
                await _send_429(send, blocked)
                return
        if not credential:
            await self.app(scope, receive, send)
            return

        status = 0
        expired = False

        async def watch(message: Any) -> None:
            nonlocal status, expired
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status == 401 and _EXPIRED in message.get("body", b""):
                expired = True
            await send(message)

        await self.app(scope, receive, watch)
        if status == 401:
            # An expired member token is routine for a customer's app; wrong keys and forged
            # tokens are what a brute force looks like.
            if not expired:
                self._good.pop(digest, None)
                self._add(fail_key, now + self.limits.auth_failure_window_seconds + 1)
        elif status and digest not in self._good:
            self._good[digest] = None
            if len(self._good) > _GOOD_CREDENTIALS:
                self._good.popitem(last=False)

    def _add(self, key: str, expires: float) -> int:
        """Count one; the estimate is the total at the last sync plus what came since."""
        self._pending[key] = self._pending.get(key, 0) + 1
        if key not in self._expires:
            self._expires[key] = expires
        return self._estimate(key)

    def _estimate(self, key: str) -> int:
        return self._known.get(key, 0) + self._sending.get(key, 0) + self._pending.get(key, 0)

    async def _sync_loop(self, stop: asyncio.Event) -> None:
        # The stop flag ends the loop even if a cancellation is lost inside the Redis client
        # (a cancel that lands while a call times out can be swallowed there).
        while not stop.is_set():
            await asyncio.sleep(SYNC_SECONDS)
            if not stop.is_set():
                await self._sync()

    async def _sync(self) -> None:
        now = time.time()
        if now < self._open_until:
            self._pending.clear()
            self._failure_keys.clear()
            return
        pending, self._pending = self._pending, {}
        failure_keys, self._failure_keys = self._failure_keys - pending.keys(), set()
        pipe = self._client().pipeline(transaction=False)
        for key, count in pending.items():
            pipe.incrby(key, count)
            pipe.expireat(key, int(self._expires[key]) + 1)
        for key in failure_keys:
            pipe.get(key)
        self._sending = pending
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS * 2):
                result = await pipe.execute() if pending or failure_keys else await self._client().ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc)
            return
        finally:
            self._sending = {}
        if isinstance(result, list):
            totals = result[0 : 2 * len(pending) : 2]
            self._known.update(zip(pending.keys(), (int(t) for t in totals), strict=True))
            self._known.update(
                (k, int(v or 0)) for k, v in zip(failure_keys, result[2 * len(pending) :], strict=True)
            )
        for key in [k for k, at in self._expires.items() if at < now]:
            self._expires.pop(key, None)
            self._known.pop(key, None)
        self._synced = True

    def _trip(self, exc: BaseException) -> None:
        now = time.time()
        if self._open_until <= now:
            log.warning(
                "rate limits off for %.0f s: Redis unavailable (%s)", CIRCUIT_OPEN_SECONDS, type(exc).__name__
            )
        self._open_until = now + CIRCUIT_OPEN_SECONDS
        # Fail open: no decisions on counts Redis could not confirm.
        self._synced = False
        self._known.clear()


async def _send_429(send: Any, blocked: Verdict) -> None:
    body = msgspec.json.encode(
        {
            "type": "https://loyalty.invalid/problems/" + blocked.code,
            "title": "Too many requests",
            "status": 429,
            "code": blocked.code,
            "detail": blocked.detail,
            "retry_after": blocked.retry_after,
        }
    )
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"%d" % blocked.retry_after),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install(app: Litestar, settings: Settings) -> RateLimiter | None:
    """Wrap the application's outermost ASGI handler; returns the limiter (for shutdown).
    With every limit at 0, nothing is installed and requests never touch Redis here."""
    limits = Limits.from_settings(settings)
    if not (limits.per_credential or limits.per_ip or limits.auth_failures):
        return None
    limiter = RateLimiter(
        app.asgi_handler, limits=Limits.from_settings(settings), redis_url=settings.redis_url or ""
    )
    app.asgi_handler = limiter
    app.on_shutdown.append(limiter.aclose)
    return limiter
