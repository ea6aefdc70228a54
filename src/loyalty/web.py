"""What every route shares: the caller, the request's transaction, idempotency keys, guards."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.params import HeaderParameter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty.auth.core import Principal
from loyalty.auth.service import Authenticator
from loyalty.errors import Forbidden, InvalidInput
from loyalty.ledger.repository import Posted, PostingConnection

PUBLIC_PATHS = {"/health/live", "/health/ready"}
JSON = "application/json"


class AuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        authenticator: Authenticator = connection.app.state.authenticator
        principal = await authenticator.authenticate(connection.headers.get("authorization"))
        return AuthenticationResult(user=principal, auth=None)


def allow(*roles: str) -> Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]:
    """A guard: only these roles may call the route. 'member' is a customer's own token.

    Async on purpose: Litestar runs a sync guard in a worker thread, a hand-off per request.
    """

    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        principal: Principal = connection.user
        if principal.role not in roles:
            raise Forbidden(
                f"The {principal.role} role may not do this.",
                code="role_not_allowed",
                extra={"role": principal.role, "allowed": list(roles)},
            )

    return guard


async def provide_principal(request: Request) -> Principal:
    return request.user


async def provide_tx(request: Request) -> AsyncIterator[AsyncConnection]:
    """The request's transaction: committed after the handler returns and before the response
    is sent; rolled back if anything raised. A failed commit becomes a 5xx, never a 2xx."""
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as conn, conn.begin():
        yield conn


async def provide_posting(request: Request) -> AsyncIterator[PostingConnection]:
    """For a write that is one call of a posting function: that single statement is its own
    transaction (autocommit), so the write costs one round trip instead of BEGIN, call and
    COMMIT. The statement commits before it returns; if the commit fails, the call raises and
    the client gets a 5xx."""
    pool: asyncpg.Pool = request.app.state.posting_pool
    async with pool.acquire() as conn:
        yield conn


async def provide_read(request: Request) -> AsyncIterator[AsyncConnection]:
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as conn:
        yield conn


IdempotencyKey = Annotated[
    str,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="The client's id for this write: a retry with the same key and body returns the first "
        "answer and has no second effect; the same key with another body is a 409.",
    ),
]


def posted(result: Posted, status: int = 201) -> Response[bytes]:
    """The posting engine's JSON goes out as it came: no decode and encode on the hot path."""
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(content=result.body, status_code=status, media_type=JSON, headers=headers)


_BODY_TYPES: dict[Any, Any] = {}
_UNKNOWN_FIELD = re.compile(r"unknown field `(?P<name>[^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


class InvalidBody(InvalidInput):
    """The body is not valid JSON of the route's schema; ``errors`` names each field."""

    code = "invalid_request"


def _body_type(request: Request) -> Any:
    handler = request.route_handler
    if handler not in _BODY_TYPES:
        parameter = handler.parsed_fn_signature.parameters.get("data")
        _BODY_TYPES[handler] = parameter.annotation if parameter is not None else None
    return _BODY_TYPES[handler]


async def strict_body(request: Request) -> None:
    """Decode the JSON body strictly before Litestar does: a number sent as a string, or a
    boolean as "true", is a 400 naming the field, not silently converted."""
    body_type = _body_type(request)
    if body_type is None:
        return
    try:
        msgspec.json.decode(await request.body(), type=body_type)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT_PATH.search(message)
        path = match.group("path") if match else ""
        reason = message[: match.start()] if match else message
        unknown = _UNKNOWN_FIELD.search(reason)
        if unknown:
            path = f"{path}.{unknown.group('name')}" if path else unknown.group("name")
        raise InvalidBody(path or "body", reason) from None
    except msgspec.DecodeError as exc:
        raise InvalidBody("body", f"not valid JSON: {exc}") from None
