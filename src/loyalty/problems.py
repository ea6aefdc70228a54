"""The one map from errors to RFC 9457 problem responses (application/problem+json)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
import sqlalchemy.exc
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from loyalty.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unprocessable,
)

log = logging.getLogger("loyalty.problems")
MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://loyalty.invalid/problems/"

STATUS: list[tuple[type[DomainError], int]] = [
    (InvalidInput, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (Unprocessable, 422),
]
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Unprocessable",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}


def problem(
    status: int,
    code: str,
    detail: str,
    request: Request | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    for key, value in (extra or {}).items():
        # Extension members never replace the standard ones (RFC 9457, section 3.2).
        body.setdefault(key, value)
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return Response(
        content=msgspec.json.encode(body), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


def domain_error_to_problem(request: Request, exc: DomainError) -> Response[bytes]:
    status = next((code for cls, code in STATUS if isinstance(exc, cls)), HTTP_500_INTERNAL_SERVER_ERROR)
    if status >= 500:
        log.error("domain error without a status: %s %s", exc.code, exc.extra)
    return problem(status, exc.code, exc.detail, request, exc.extra)


def _field_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        # Bodies are decoded by web.StrictRequest, which names their fields itself: what comes
        # here is a path, query or header parameter, named by its key.
        message = str(item.get("message", ""))
        key = item.get("key")
        field = str(key or item.get("source") or "body")
        if field == "data":
            field = "body"
        if item.get("source") == "header" and key:
            # Name the header as the client sends it, not the Python parameter.
            field = "-".join(part.capitalize() for part in str(key).split("_"))
        errors.append({"field": field, "reason": message, "source": str(item.get("source", "body"))})
    return errors


def validation_to_problem(request: Request, exc: ValidationException) -> Response[bytes]:
    errors = _field_errors(exc)
    if errors:
        first = errors[0]
        detail = f"{first['field']}: {first['reason']}"
    else:
        detail = exc.detail or "The request is not valid."
    return problem(400, "invalid_request", detail, request, {"errors": errors})


def http_to_problem(request: Request, exc: HTTPException) -> Response[bytes]:
    code = {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "request_too_large",
        415: "unsupported_media_type",
        429: "too_many_requests",
    }.get(exc.status_code, "http_error")
    return problem(exc.status_code, code, exc.detail, request)


# A backing service that does not answer is a 503 with Retry-After, not a 500: the request may
# be retried as it was (writes carry an Idempotency-Key, so a retry never doubles one).
RETRY_AFTER_SECONDS = 2
# Errors that say "the server is gone, hung or refusing connections", not "this statement is wrong".
_POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08, and a connection that was closed under us
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up, cancelled
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,  # the connection or pool was closed
    # The driver's protocol state broken by a server that vanished mid-statement ("cannot
    # switch to state ...; another operation is in progress"): the pool discards it.
    asyncpg.exceptions._base.InternalClientError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection within pool_timeout
    TimeoutError,  # connect, pool acquire or statement timeout (asyncio.TimeoutError is this)
    OSError,  # refused, reset, no such socket
)
_REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def unavailable_service(exc: BaseException) -> str | None:
    """'redis' or 'postgresql' when ``exc`` (or what it wraps) means that service is unreachable."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, _REDIS_DOWN):
            return "redis"
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return "postgresql"
        if isinstance(current, _POSTGRES_DOWN):
            return "postgresql"
        # SQLAlchemy keeps the driver's error in .orig; asyncpg's adapter chains the original.
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
        seen += 1
    return None


def unavailable_to_problem(request: Request, service: str, exc: BaseException) -> Response[bytes]:
    # One line, no traceback: during an outage every request ends here.
    log.warning("%s unavailable on %s %s: %s", service, request.method, request.url.path, type(exc).__name__)
    name = "PostgreSQL" if service == "postgresql" else "Redis"
    return problem(
        503,
        f"{'database' if service == 'postgresql' else 'redis'}_unavailable",
        f"{name} does not answer. Retry later: a write retried with its Idempotency-Key applies once.",
        request,
        {"service": service},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def internal_to_problem(request: Request, exc: Exception) -> Response[bytes]:
    service = unavailable_service(exc)
    if service is not None:
        return unavailable_to_problem(request, service, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal_error", "The request failed and nothing was committed.", request)


EXCEPTION_HANDLERS = {
    DomainError: domain_error_to_problem,
    ValidationException: validation_to_problem,
    HTTPException: http_to_problem,
    Exception: internal_to_problem,
}
