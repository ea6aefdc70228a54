"""Security headers on every answer, CORS, rate limits and the failed-authentication throttle."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio
from litestar.testing import AsyncTestClient

from loyalty.app import create_app
from loyalty.http import ratelimit
from loyalty.settings import Settings
from tests.api.helpers import Api, problem
from tests.support import Programme, new_key

ORIGIN = "https://shop.example"
# Long windows: a test that straddled a window boundary would see its counts start again.
WINDOW = 3600


@asynccontextmanager
async def client_for(settings: Settings, **changes: Any) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client of a second app, built with these settings changed."""
    async with AsyncTestClient(app=create_app(dataclasses.replace(settings, **changes))) as client:
        yield client


def _assert_hardened(headers: Any) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in headers
    assert "server" not in headers


async def test_every_kind_of_answer_carries_the_security_headers(api: Api) -> None:
    await api.enrol("m1")
    await api.budget()
    earn = {"member_id": "m1", "budget": "base", "points": 5}
    answers = [
        await api.post("/v1/earn", earn),  # the posting lane
        await api.get("/v1/programme"),  # a plain route
        await api.get("/v1/no-such-route", expect=404),  # no route at all
        await api.client.get("/v1/programme", headers={"Authorization": "Bearer lk_wrong"}),  # 401
        await api.post("/v1/earn", {"member_id": "m1"}, expect=400),  # problem from the lane
        await api.client.get("/health/live"),
    ]
    for r in answers:
        _assert_hardened(r.headers)
    problem(answers[3], 401, "invalid_api_key")


async def test_hsts_only_when_served_over_https(settings: Settings, programme: Programme) -> None:
    async with client_for(settings, https=True) as client:
        r = await client.get("/health/live")
    assert r.headers["strict-transport-security"].startswith("max-age=31536000")


async def test_no_cors_headers_unless_origins_are_configured(api: Api) -> None:
    r = await api.client.get("/v1/programme", headers={**api.headers(), "Origin": ORIGIN})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.startswith("access-control-")]


async def test_cors_preflight_is_answered_before_authentication(
    settings: Settings, programme: Programme
) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    async with client_for(settings, cors_origins=(ORIGIN,)) as client:
        ok = await client.options("/v1/earn", headers=preflight)
        refused = await client.options("/v1/earn", headers={**preflight, "Origin": "https://evil.example"})
        actual = await client.get(
            "/v1/programme", headers={**programme.headers("operator"), "Origin": ORIGIN}
        )
        other = await client.get(
            "/v1/programme", headers={**programme.headers("operator"), "Origin": "https://evil.example"}
        )
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    allowed = ok.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "idempotency-key", "x-request-id"):
        assert header in allowed
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in ok.headers
    _assert_hardened(ok.headers)
    problem(refused, 403, "cors_origin_not_allowed")
    assert "access-control-allow-origin" not in refused.headers
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == ORIGIN
    exposed = actual.headers["access-control-expose-headers"].lower()
    assert {"idempotent-replayed", "retry-after", "x-request-id"} <= {h.strip() for h in exposed.split(",")}
    assert "Origin" in actual.headers["vary"]
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


async def test_a_key_over_its_limit_gets_429_with_retry_after(
    settings: Settings, programme: Programme
) -> None:
    # Fresh windows: the counters are in the test worker's Redis database.
    await _flush(settings)
    async with client_for(settings, rate_limit_per_credential=3, rate_limit_window_seconds=WINDOW) as client:
        answers = [await client.get("/v1/programme", headers=programme.headers("crm")) for _ in range(4)]
        other_key = await client.get("/v1/programme", headers=programme.headers("operator"))
        health = [await client.get("/health/live") for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    body = problem(answers[3], 429, "rate_limited")
    assert 1 <= int(answers[3].headers["retry-after"]) <= WINDOW and body["retry_after"] == int(
        answers[3].headers["retry-after"]
    )
    _assert_hardened(answers[3].headers)
    assert other_key.status_code == 200
    assert {r.status_code for r in health} == {200}


async def test_an_address_over_its_limit_gets_429(settings: Settings, programme: Programme) -> None:
    await _flush(settings)
    async with client_for(settings, rate_limit_per_ip=4, rate_limit_window_seconds=WINDOW) as client:
        codes = [
            (await client.get("/v1/programme", headers=programme.headers(role))).status_code
            for role in ("crm", "operator", "marketing", "ecommerce", "crm")
        ]
    assert codes == [200, 200, 200, 200, 429]


async def test_wrong_keys_from_one_address_are_throttled(settings: Settings, programme: Programme) -> None:
    await _flush(settings)
    async with client_for(settings, auth_failure_limit=5, auth_failure_window_seconds=60) as client:
        # The shop's own key authenticated before the attack: it keeps working.
        assert (await client.get("/v1/programme", headers=programme.headers("ecommerce"))).status_code == 200
        wrong = [
            await client.get("/v1/programme", headers={"Authorization": f"Bearer lk_guess{i}"})
            for i in range(8)
        ]
        right_but_new = await client.get("/v1/programme", headers=programme.headers("operator"))
        known = await client.get("/v1/programme", headers=programme.headers("ecommerce"))
    assert [r.status_code for r in wrong] == [401] * 5 + [429] * 3
    problem(wrong[5], 429, "too_many_failed_authentications")
    assert int(wrong[5].headers["retry-after"]) >= 1
    # Even a correct key, first seen now, gets no answer that would tell a guesser it is right.
    assert right_but_new.status_code == 429
    assert known.status_code == 200


async def test_limits_fail_open_and_quickly_while_redis_is_down(settings: Settings, api: Api) -> None:
    programme = api.programme
    await api.budget()
    dead = "redis://127.0.0.1:9/0"  # the discard port: nothing listens there
    async with client_for(
        settings, redis_url=dead, rate_limit_per_credential=1, auth_failure_limit=1
    ) as client:
        started = time.perf_counter()
        r = await client.post("/v1/members", json={"member_id": "m1"}, headers=programme.headers("operator"))
        earns = [
            await client.post(
                "/v1/earn",
                json={"member_id": "m1", "budget": "base", "points": 1},
                headers={**programme.headers("ecommerce"), "Idempotency-Key": new_key()},
            )
            for _ in range(20)
        ]
        elapsed = time.perf_counter() - started
    assert r.status_code == 201, r.text
    assert {e.status_code for e in earns} == {201}
    # One connection attempt, then the circuit stays open: no per-request timeout.
    assert elapsed < 3.0


async def _flush(settings: Settings) -> None:
    client = redis.asyncio.Redis.from_url(settings.redis_url or "")
    try:
        for pattern in ("rl:*",):
            keys = [k async for k in client.scan_iter(pattern)]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


async def test_limits_hold_across_api_processes(
    settings: Settings, programme: Programme, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two app instances (two API processes) share the counters through Redis."""
    # A loaded test machine can take longer than the production Redis timeout (0.25 s) for a
    # sync; a sync that timed out turns the limits off for a while, which is right in production
    # and is not what this test is about.
    monkeypatch.setattr(ratelimit, "REDIS_TIMEOUT_SECONDS", 2.0)
    await _flush(settings)
    limited = dataclasses.replace(settings, rate_limit_per_credential=3, rate_limit_window_seconds=WINDOW)
    headers = programme.headers("crm")
    async with (
        AsyncTestClient(app=create_app(limited)) as first,
        AsyncTestClient(app=create_app(limited)) as second,
    ):
        codes = [(await first.get("/v1/programme", headers=headers)).status_code for _ in range(2)]
        await asyncio.sleep(0.3)  # a sync or two
        codes.append((await second.get("/v1/programme", headers=headers)).status_code)
        await asyncio.sleep(0.3)
        codes.append((await second.get("/v1/programme", headers=headers)).status_code)
        # The first process learns the other's counts at its next sync (100 ms): it may let one
        # more through, then refuses too.
        await first.get("/v1/programme", headers=headers)
        await asyncio.sleep(0.3)
        codes.append((await first.get("/v1/programme", headers=headers)).status_code)
    assert codes == [200, 200, 200, 429, 429]


async def test_counts_on_their_way_to_redis_still_count(settings: Settings) -> None:
    """While a sync's INCRBYs are on the wire, the counts it carries are in neither the local
    pending counts nor the totals Redis answered: the estimate must still include them, or a
    guesser's sixth try slips through every time it lands during a sync."""
    assert settings.redis_url is not None
    await _flush(settings)
    limiter = ratelimit.RateLimiter(
        None, limits=ratelimit.Limits(auth_failures=5), redis_url=settings.redis_url
    )
    try:
        key = f"rl:af:test-{new_key()}:0"
        for _ in range(5):
            limiter._add(key, time.time() + 60)
        sync = asyncio.create_task(limiter._sync())
        await asyncio.sleep(0)  # the pipeline is sent; Redis has not answered yet
        assert not sync.done()
        assert limiter._estimate(key) == 5
        limiter._add(key, time.time() + 60)
        assert limiter._estimate(key) == 6
        await sync
        assert limiter._estimate(key) == 6
    finally:
        await limiter.aclose()
