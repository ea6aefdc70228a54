"""Rate limits in Redis: per credential, per client IP, and failed authentications per IP.

One ASGI wrapper outside routing: a request costs one pipelined Redis round trip (fixed
windows: INCR and EXPIRE of two counters, GET of the IP's failure counter). Redis is an aid
here, never a dependency: when it is slow or gone the limits fail open at once (short socket
timeouts), and a circuit stops asking it for a few seconds, so the checkout keeps working.
"""

from __future__ import annotations

import asyncio
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
    """ASGI wrapper. The Redis client is its own, with short timeouts and no retries."""

    def __init__(self, app: Any, *, limits: Limits, redis_url: str) -> None:
        self.app = app
        self.limits = limits
        self.redis_url = redis_url
        self._redis: Redis | None = None
        self._open_until = 0.0
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
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        ip = scope["client"][0] if scope.get("client") else "-"
        credential = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                credential = value
                break
        digest = hashlib.sha256(credential).digest()[:16] if credential else b""
        now = time.time()
        counts = await self._count(ip, digest, now)
        if counts is not None:
            ip_count, credential_count, failures = counts
            blocked = verdict(
                self.limits,
                now=now,
                ip_count=ip_count,
                credential_count=credential_count,
                failures=failures,
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
                await self._fail(ip, now)
        elif status and digest not in self._good:
            self._good[digest] = None
            if len(self._good) > _GOOD_CREDENTIALS:
                self._good.popitem(last=False)

    async def _count(self, ip: str, digest: bytes, now: float) -> tuple[int, int, int] | None:
        if now < self._open_until:
            return None
        window = self.limits.window_seconds
        slot = int(now // window)
        fail_slot = int(now // self.limits.auth_failure_window_seconds)
        ip_key = f"rl:ip:{ip}:{slot}"
        pipe = self._client().pipeline(transaction=False)
        pipe.incr(ip_key)
        pipe.expire(ip_key, window + 1)
        if digest:
            cred_key = b"rl:c:" + digest.hex().encode() + b":%d" % slot
            pipe.incr(cred_key)
            pipe.expire(cred_key, window + 1)
        pipe.get(f"rl:af:{ip}:{fail_slot}")
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS * 2):
                result = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc)
            return None
        failures = int(result[-1] or 0)
        return int(result[0]), int(result[2]) if digest else 0, failures

    async def _fail(self, ip: str, now: float) -> None:
        if now < self._open_until:
            return
        window = self.limits.auth_failure_window_seconds
        key = f"rl:af:{ip}:{int(now // window)}"
        pipe = self._client().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, window + 1)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS * 2):
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._trip(exc)

    def _trip(self, exc: BaseException) -> None:
        now = time.time()
        if self._open_until <= now:
            log.warning(
                "rate limits off for %.0f s: Redis unavailable (%s)", CIRCUIT_OPEN_SECONDS, type(exc).__name__
            )
        self._open_until = now + CIRCUIT_OPEN_SECONDS


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


def install(app: Litestar, settings: Settings) -> RateLimiter:
    """Wrap the application's outermost ASGI handler; returns the limiter (for shutdown)."""
    limiter = RateLimiter(
        app.asgi_handler, limits=Limits.from_settings(settings), redis_url=settings.redis_url or ""
    )
    app.asgi_handler = limiter
    app.on_shutdown.append(limiter.aclose)
    return limiter
