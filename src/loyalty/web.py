"""What every route shares: the caller, the request's transaction, idempotency keys, guards."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.params import HeaderParameter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty.auth.core import Principal
from loyalty.auth.service import Authenticator
from loyalty.edge import nul_field
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
        # OPTIONS only answers which methods a path has (and CORS preflights): it is not
        # authenticated, so no role applies to it.
        if connection.scope.get("method") != "OPTIONS":
            require_role(connection.user, roles)

    return guard


def require_role(principal: Principal, roles: tuple[str, ...]) -> None:
    if principal.role not in roles:
        raise Forbidden(
            f"The {principal.role} role may not do this.",
            code="role_not_allowed",
            extra={"role": principal.role, "allowed": list(roles)},
        )


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
    state = request.app.state
    pool: asyncpg.Pool = state.posting_pool
    async with pool.acquire(timeout=state.pool_timeout) as conn:
        yield conn


async def provide_grouped_posting(request: Request) -> AsyncIterator[PostingConnection]:
    """Like provide_posting, for a route whose write is one batchable posting (a clawback): with
    group commit on, the process's committer, which answers once the posting's batch committed."""
    state = request.app.state
    if state.committer is not None:
        yield state.committer
        return
    async with state.posting_pool.acquire(timeout=state.pool_timeout) as conn:
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
_UNKNOWN_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]+)`")
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
    if body_type is not None:
        decode_body(await request.body(), body_type)


def decode_body(body: bytes, body_type: Any) -> Any:
    """Strict msgspec decode of a request body; every failure is a 400 naming the field."""
    try:
        data = msgspec.json.decode(body, type=body_type)
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
    # PostgreSQL stores no NUL in text or jsonb; raw JSON can only carry one escaped.
    if b"\\u0000" in body:
        field = nul_field(msgspec.json.decode(body))
        if field is not None:
            raise InvalidBody(field, "must not contain a NUL character")
    return data


# One posting: (connection, caller, decoded body or None, idempotency key, path parameters).
PostingCall = Callable[[PostingConnection, Principal, Any, str, dict[str, Any]], Awaitable[Posted]]
_MAX_POSTING_BODY = 1024 * 1024
_IDEMPOTENCY_HEADER = b"idempotency-key"


class PostingLane:
    """The lean path for writes that are one posting-function call (earn, spend, holds).

    Installed as the route handler's own middleware, after routing and authentication: it
    checks the role, the Idempotency-Key header and the body, makes the call on the posting
    pool and sends the engine's JSON, without Litestar's per-request dependency injection,
    signature model and response machinery (about half the API's CPU per earn). The handler
    behind it stays registered for OpenAPI and is never reached. Its errors are raised, so
    they go through the one problem map like any route's.
    """

    def __init__(
        self,
        app: Any,
        *,
        roles: tuple[str, ...],
        body_type: Any,
        call: PostingCall,
        status: int = 201,
    ) -> None:
        self.app = app
        self.roles = roles
        self.body_type = body_type
        self.call = call
        self.status = status

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        principal: Principal = scope["user"]
        require_role(principal, self.roles)
        data = None
        if self.body_type is not None:
            data = decode_body(await _read_body(receive), self.body_type)
        key = _idempotency_key(scope["headers"])
        state = scope["litestar_app"].state
        if state.committer is not None:  # group commit: answered once its batch committed
            result = await self.call(state.committer, principal, data, key, scope["path_params"])
        else:
            pool: asyncpg.Pool = state.posting_pool
            async with pool.acquire(timeout=state.pool_timeout) as conn:
                result = await self.call(conn, principal, data, key, scope["path_params"])
        replayed = [(b"idempotent-replayed", b"true")] if result.replayed else []
        await send_json(send, self.status, result.body, replayed)


async def send_json(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole JSON response on the raw ASGI ``send`` of a lane."""
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# One write in the request's transaction: (connection, caller, decoded body) -> (replayed, JSON).
TransactionCall = Callable[[AsyncConnection, Principal, Any], Awaitable[tuple[bool, bytes]]]


class TransactionLane:
    """The lean path for a hot write that needs a transaction of several statements (a member
    event): like PostingLane, without Litestar's per-request machinery, but the call runs in a
    SQLAlchemy transaction that commits before the response is sent. A failed commit raises
    into the problem map (a 5xx), never a 2xx; the handler behind stays for OpenAPI."""

    def __init__(self, app: Any, *, roles: tuple[str, ...], body_type: Any, call: TransactionCall) -> None:
        self.app = app
        self.roles = roles
        self.body_type = body_type
        self.call = call

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        principal: Principal = scope["user"]
        require_role(principal, self.roles)
        data = decode_body(await _read_body(receive), self.body_type)
        engine: AsyncEngine = scope["litestar_app"].state.engine
        async with engine.connect() as conn, conn.begin():
            replayed, body = await self.call(conn, principal, data)
        await send_json(send, 201, body, [(b"idempotent-replayed", b"true")] if replayed else None)


async def _read_body(receive: Any) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_POSTING_BODY:
            raise HTTPException(status_code=413, detail=f"The body is larger than {_MAX_POSTING_BODY} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _idempotency_key(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == _IDEMPOTENCY_HEADER:
            key = value.decode("latin-1")
            if not 1 <= len(key) <= 200:
                raise InvalidInput("Idempotency-Key", "must be 1 to 200 characters (idempotency key)")
            return key
    raise InvalidInput("Idempotency-Key", "this header is required on every write")


class ClientDisconnected(Exception):
    """The client went away before its body arrived; nothing was written."""
