"""OpenTelemetry tracing: spans for requests and their database statements when switched on by
settings, none when off."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from loyalty.app import create_app
from loyalty.observability import tracing
from loyalty.settings import Settings
from tests.support import Programme, make_programme


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    # The provider the settings-driven install will find (instead of the OTLP exporter).
    tracing._ensure_provider("loyalty-api", SimpleSpanProcessor(spans))
    try:
        yield spans
    finally:
        tracing.uninstall()


def _db_spans(spans: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.kind == SpanKind.CLIENT and (s.attributes or {}).get("db.system") == "postgresql"
    ]


async def test_spans_per_request_and_statement_when_on(
    settings: Settings, exporter: InMemorySpanExporter, engine: object
) -> None:
    app = create_app(dataclasses.replace(settings, otel_enabled=True))
    programme: Programme = await make_programme(engine)  # type: ignore[arg-type]
    async with AsyncTestClient(app=app) as client:
        r = await client.get(
            "/v1/members/nobody/balance", headers={"Authorization": f"Bearer {programme.keys['operator']}"}
        )
        assert r.status_code == 404
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(servers) == 1
    assert "/v1/members/nobody/balance" in str(servers[0].attributes)
    assert (servers[0].attributes or {}).get(
        "http.status_code", (servers[0].attributes or {}).get("http.response.status_code")
    ) == 404
    db = _db_spans(spans)
    assert db, [s.name for s in spans]
    # The request's statements are in its trace (the others are the test's own set-up).
    assert any(s.context.trace_id == servers[0].context.trace_id for s in db)


async def test_no_spans_when_off(settings: Settings, engine: object) -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    app = create_app(settings)  # otel_enabled defaults to False
    assert not settings.otel_enabled
    programme: Programme = await make_programme(engine)  # type: ignore[arg-type]
    async with AsyncTestClient(app=app) as client:
        r = await client.get(
            "/v1/members/nobody/balance", headers={"Authorization": f"Bearer {programme.keys['operator']}"}
        )
        assert r.status_code == 404
    # Nothing was set up: no provider, asyncpg untouched, no tracing layer around the app.
    assert tracing._provider is None
    assert not AsyncPGInstrumentor().is_instrumented_by_opentelemetry
    assert "OpenTelemetry" not in type(app.asgi_handler).__name__
