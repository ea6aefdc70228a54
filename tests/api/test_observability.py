"""Observability at the edge: /metrics, ledger and job counters, request ids in answers, logs
and the jobs a request enqueues, and tracing that is silent when off."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.app import create_app
from loyalty.observability import logs, metrics
from loyalty.settings import Settings
from loyalty.tiers import tasks as tier_tasks
from loyalty.worker import build_worker_settings
from tests.api.helpers import Api, problem


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await api.client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


REQUESTS = "loyalty_http_request_duration_seconds_count"
LEDGER = "loyalty_ledger_operations_total"


async def test_requests_are_counted_per_route_template_and_status(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    before = await scrape(api)
    await api.earn("alice", 10)
    await api.earn("alice", 5)
    await api.get("/v1/members/alice/balance")
    await api.get("/v1/members/nobody-here/balance", expect=404)
    await api.client.get("/no/such/route")
    after = await scrape(api)
    earn = {"route": "/v1/earn", "method": "POST", "status": "201"}
    assert value(after, REQUESTS, **earn) - value(before, REQUESTS, **earn) == 2
    # The template, not the raw path: one series for every member.
    # (Other tests in this process may have counted other balance routes, such as /v1/me/balance.)
    balance = {dict(labels)["route"] for name, labels in after if name == REQUESTS}
    assert "/v1/members/{member_id}/balance" in balance
    assert not any(route.startswith("/v1/members/") and "{" not in route for route in balance)
    ok = {"route": "/v1/members/{member_id}/balance", "method": "GET", "status": "200"}
    missing = {**ok, "status": "404"}
    assert value(after, REQUESTS, **ok) - value(before, REQUESTS, **ok) == 1
    assert value(after, REQUESTS, **missing) - value(before, REQUESTS, **missing) == 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(after, REQUESTS, **unmatched) - value(before, REQUESTS, **unmatched) == 1
    assert not any("nobody-here" in str(labels) or "/no/such" in str(labels) for _, labels in after)


async def test_ledger_operations_are_counted_by_kind_and_outcome(api: Api) -> None:
    await api.budget()
    await api.enrol("bob")
    before = await scrape(api)
    await api.earn("bob", 10, key="earn-once")
    await api.earn("bob", 10, key="earn-once")  # a replay
    r = await api.post("/v1/spend", {"member_id": "bob", "points": 1000}, role="ecommerce", expect=None)
    problem(r, 422, "insufficient_points")
    await api.spend("bob", 3)
    after = await scrape(api)

    def delta(**labels: str) -> float:
        return value(after, LEDGER, **labels) - value(before, LEDGER, **labels)

    assert delta(kind="earn", outcome="ok", code="") == 1
    assert delta(kind="earn", outcome="replayed", code="") == 1
    assert delta(kind="spend", outcome="refused", code="insufficient_points") == 1
    assert delta(kind="spend", outcome="ok", code="") == 1


async def test_scrape_time_figures_from_the_database(api: Api) -> None:
    await api.budget()
    await api.member_with("carol", 40)
    await api.spend("carol", 15)
    metrics_app = api.client.app
    # The figures are cached for a few seconds; this test wants this moment's.
    edge = metrics_app.asgi_handler
    edge.database_gauges._at = -1e9
    after = await scrape(api)
    code = api.programme.code
    assert value(after, "loyalty_database_gauges_up") == 1
    assert value(after, "loyalty_points_issued", programme=code) == 40
    assert value(after, "loyalty_points_redeemed", programme=code) == 15
    assert value(after, "loyalty_points_expired", programme=code) == 0
    assert ("loyalty_webhook_deliveries_open", ()) in after
    assert ("loyalty_webhook_oldest_open_age_seconds", ()) in after
    assert value(after, "loyalty_db_pool_connections", pool="posting", state="size") >= 1


async def test_metrics_need_the_token_when_one_is_set(settings: Settings) -> None:
    app = create_app(dataclasses.replace(settings, metrics_token="s3cret-scrape"))
    async with AsyncTestClient(app=app) as client:
        r = await client.get("/metrics")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        assert r.status_code == 200
        assert "loyalty_http_request_duration_seconds" in r.text


async def test_without_a_token_only_loopback_clients_may_scrape(app: Litestar) -> None:
    edge = app.asgi_handler
    assert edge._may_scrape({"client": ("127.0.0.1", 5000), "headers": []})
    assert edge._may_scrape({"client": ("::1", 5000), "headers": []})
    assert not edge._may_scrape({"client": ("10.1.2.3", 5000), "headers": []})


# --- jobs -------------------------------------------------------------------------------------


async def test_a_failing_job_is_counted_through_the_worker_wrapper() -> None:
    async def explode_now(ctx: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    async def fine_job(ctx: dict[str, Any]) -> int:
        return 3

    failing, fine = metrics.observed_job(explode_now), metrics.observed_job(fine_job)
    runs = metrics.JOB_RUNS

    def count(job: str, outcome: str) -> float:
        return runs.labels(job, outcome)._value.get()

    with pytest.raises(RuntimeError):
        await failing({})
    assert await fine({}) == 3
    assert count("explode_now", "failed") == 1
    assert count("explode_now", "ok") == 0
    assert count("fine_job", "ok") == 1
    assert metrics.JOB_FAILURES.labels("explode_now", "RuntimeError")._value.get() == 1


def test_every_worker_function_and_cron_job_goes_through_the_wrapper() -> None:
    settings = dataclasses.replace(
        Settings.from_env(), database_url="postgresql://db/loyalty", redis_url="redis://localhost/0"
    )
    built = build_worker_settings(settings)
    assert all(getattr(f, "__loyalty_observed__", False) for f in built["functions"])
    assert all(getattr(c.coroutine, "__loyalty_observed__", False) for c in built["cron_jobs"])
    # The job's name (arq's registry key and the metric label) is the wrapped function's.
    assert "reassess_tiers" in {f.__qualname__ for f in built["functions"]}


# --- request ids ------------------------------------------------------------------------------


async def test_a_given_request_id_is_echoed_on_lanes_routes_and_errors(api: Api) -> None:
    await api.budget()
    await api.enrol("dora")
    given = {"X-Request-ID": "order-42.attempt-1"}
    earn = await api.client.post(
        "/v1/earn",
        json={"member_id": "dora", "budget": "base", "points": 1},
        headers={**api.headers("ecommerce"), **given},
    )
    assert earn.status_code == 201
    assert earn.headers["x-request-id"] == "order-42.attempt-1"
    read = await api.client.get("/v1/members/dora/balance", headers={**api.headers(), **given})
    assert read.headers["x-request-id"] == "order-42.attempt-1"
    refused = await api.client.get("/v1/members/dora/balance", headers=given)  # no key: 401
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == "order-42.attempt-1"
    lane_error = await api.client.post(
        "/v1/earn",
        content=b"{",
        headers={**api.headers("ecommerce"), **given, "Content-Type": "application/json"},
    )
    assert lane_error.status_code == 400
    assert lane_error.headers["x-request-id"] == "order-42.attempt-1"


@pytest.mark.parametrize("bad", [None, "", "x" * 129, "has space", "semi;colon", "tab\there"])
async def test_a_missing_or_malformed_request_id_is_replaced(api: Api, bad: str | None) -> None:
    headers = {} if bad is None else {"X-Request-ID": bad}
    r = await api.client.get("/health/live", headers=headers)
    rid = r.headers["x-request-id"]
    assert rid != bad
    assert len(rid) == 32 and int(rid, 16) >= 0
    again = await api.client.get("/health/live", headers=headers)
    assert again.headers["x-request-id"] != rid


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """structlog's JSON output of the test, on a stream of its own; the set-up is undone after."""
    stream = io.StringIO()
    logs.configure_logging("INFO", "json")
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_loyalty", False)]
    for handler in ours:
        handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        for handler in ours:
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_the_request_id_is_in_the_requests_log_lines(
    settings: Settings, captured_logs: io.StringIO
) -> None:
    app = create_app(dataclasses.replace(settings, access_log=True))
    async with AsyncTestClient(app=app) as client:
        await client.get("/health/live", headers={"X-Request-ID": "trace-me-1"})
        await client.get("/health/live")
    access = [line for line in lines(captured_logs) if line.get("logger") == "loyalty.access"]
    assert access[0]["request_id"] == "trace-me-1"
    assert access[0]["route"] == "/health/live" and access[0]["status"] == 200
    assert access[0]["level"] == "info" and "timestamp" in access[0]
    assert len(access[1]["request_id"]) == 32
    # Outside a request, no request id.
    logging.getLogger("loyalty.test").warning("between requests")
    assert "request_id" not in lines(captured_logs)[-1]


async def test_the_request_id_reaches_the_job_it_enqueues(
    api: Api, redis_url: str, engine: AsyncEngine, captured_logs: io.StringIO
) -> None:
    r = await api.client.post(
        "/v1/tiers/reassess", json={}, headers={**api.headers(), "X-Request-ID": "reassess-77"}
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    redis = Redis.from_url(redis_url)
    try:
        info = await Job(
            job_id, ArqRedis(connection_pool=redis.connection_pool), _queue_name=tier_tasks.QUEUE_NAME
        ).info()
        assert info is not None
        assert info.kwargs == {"request_id": "reassess-77"}
        await redis.zrem(tier_tasks.QUEUE_NAME, job_id)
    finally:
        await redis.aclose()
    # The worker runs it through the same wrapper: the job's log lines carry the id.
    job = metrics.observed_job(tier_tasks.reassess_tiers)
    await job({"engine": engine}, *info.args, **info.kwargs)
    job_lines = [line for line in lines(captured_logs) if line.get("logger") == "loyalty.tiers.tasks"]
    assert job_lines and all(line["request_id"] == "reassess-77" for line in job_lines)
    assert logs.request_id.get() is None
