"""OpenTelemetry tracing, off by default. Nothing here imports OpenTelemetry until ``install``
is called, so with tracing off the packages (the ``[otel]`` extra) need not be installed.

On: a server span per request (opentelemetry-instrumentation-asgi) and a client span per
asyncpg statement (opentelemetry-instrumentation-asyncpg, which covers SQLAlchemy's queries
too, as they run on asyncpg). Exported over OTLP/HTTP to the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the other ``OTEL_*`` variables).
"""

from __future__ import annotations

from typing import Any

import loyalty

_provider: Any = None


def install(app: Any, *, service_name: str = "loyalty-api", span_processor: Any = None) -> Any:
    """Wrap the app's ASGI handler in a tracing middleware; answers the tracer provider.

    ``span_processor``: tests pass one over an in-memory exporter; by default a batch
    processor over the OTLP/HTTP exporter.
    """
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    provider = _ensure_provider(service_name, span_processor)
    app.asgi_handler = OpenTelemetryMiddleware(app.asgi_handler, tracer_provider=provider)
    return provider


def install_worker(*, service_name: str = "loyalty-worker") -> Any:
    """The worker: spans for its database statements."""
    return _ensure_provider(service_name, None)


def _ensure_provider(service_name: str, span_processor: Any) -> Any:
    global _provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    if _provider is None:
        _provider = TracerProvider(
            resource=Resource.create({"service.name": service_name, "service.version": loyalty.__version__})
        )
        if span_processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            span_processor = BatchSpanProcessor(OTLPSpanExporter())
        _provider.add_span_processor(span_processor)
        trace.set_tracer_provider(_provider)
        _instrument_asyncpg(_provider)
    elif span_processor is not None:
        _provider.add_span_processor(span_processor)
    return _provider


def _instrument_asyncpg(provider: Any) -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def uninstall() -> None:
    """Undo the asyncpg instrumentation and forget the provider (for tests)."""
    global _provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    _provider.shutdown()
    _provider = None
