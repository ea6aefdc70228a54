"""Metrics, structured logs, request ids and tracing: what an operator watches the service with.

``metrics`` (Prometheus), ``logs`` (structlog over stdlib logging, request ids), ``tracing``
(OpenTelemetry, imported only when switched on) and ``edge`` (the outermost ASGI layer that
ties them to each request).
"""
