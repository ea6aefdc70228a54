"""What every route shares: the caller, the request's transaction, idempotency keys, guards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Protocol

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.params import HeaderParameter
from litestar.types import Empty
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty import decoding
from loyalty.errors import Forbidden, InvalidInput
from loyalty.http.edge import nul_field
from loyalty.http.ports import Authenticator
from loyalty.http.principal import Principal

PUBLIC_PATHS = {"/health/live", "/health/ready"}
JSON = "application/json"


# Where a request's database deadline is kept in its ASGI scope (see db_deadline).
DB_DEADLINE = "loyalty.db_deadline"


class AuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        authenticator: Authenticator = connection.app.state.authenticator
        # The request's database deadline starts here: a key not in the cache is looked up in
        # PostgreSQL, and that wait counts towards the same bound as the fast route's own.
        budget = getattr(connection.app.state, "db_deadline", None)
        deadline = None if budget is None else asyncio.get_running_loop().time() + budget
        connection.scope[DB_DEADLINE] = deadline  # type: ignore[literal-required]
        principal = await authenticator.authenticate(connection.headers.get("authorization"), deadline)
        return AuthenticationResult(user=principal, auth=None)


def db_deadline(scope: Any) -> float | None:
    """The event-loop time by which the request's database work must be done (None: unbounded)."""
    deadline: float | None = scope.get(DB_DEADLINE)
    return deadline


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


async def provide_posting(request: Request) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
    """For a write that is one call of a posting function: that single statement is its own
    transaction (autocommit), so the write costs one round trip instead of BEGIN, call and
    COMMIT. The statement commits before it returns; if the commit fails, the call raises and
    the client gets a 5xx."""
    state = request.app.state
    pool: asyncpg.Pool = state.posting_pool
    async with pool.acquire(timeout=state.pool_timeout) as conn:
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


class Answer(Protocol):
    """What a write's domain call answers: its JSON as bytes, and whether it was a replay."""

    @property
    def replayed(self) -> bool: ...

    @property
    def body(self) -> bytes: ...


def posted(result: Answer, status: int = 201) -> Response[bytes]:
    """The posting engine's JSON goes out as it came: no decode and encode on the hot path."""
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(content=result.body, status_code=status, media_type=JSON, headers=headers)


class InvalidRequest(InvalidInput):
    """The request breaks its documented schema (a body field, a parameter's limit, a required
    header); ``field`` names it. ``invalid_input`` is kept for what the schema allows and the
    domain refuses."""

    code = "invalid_request"


class InvalidBody(InvalidRequest):
    """The body is not valid JSON of the route's schema."""


def decode_body(body: bytes, body_type: Any) -> Any:
    """Strict msgspec decode of a request body; every failure is a 400 naming the field."""
    try:
        data = decoding.decode(body, body_type)
    except decoding.DecodeFailure as exc:
        raise InvalidBody(exc.error.path or "body", exc.error.reason) from None
    # PostgreSQL stores no NUL in text or jsonb; raw JSON can only carry one escaped.
    if b"\\u0000" in body:
        field = nul_field(msgspec.json.decode(body))
        if field is not None:
            raise InvalidBody(field, "must not contain a NUL character")
    return data


_BODY_TYPES: dict[Any, Any] = {}


def _body_type(handler: Any) -> Any:
    if handler not in _BODY_TYPES:
        parameter = handler.parsed_fn_signature.parameters.get("data")
        _BODY_TYPES[handler] = parameter.annotation if parameter is not None else None
    return _BODY_TYPES[handler]


class StrictRequest(Request[Any, Any, Any]):
    """The app's request class (Litestar's ``request_class`` extension point). A JSON body is
    decoded once, strictly, straight into the handler's ``data`` type: a number sent as a
    string, or a boolean as "true", is a 400 naming the field, not silently converted. The
    signature model then takes the decoded Struct as it is."""

    async def json(self) -> Any:
        body_type = _body_type(self.route_handler)
        if body_type is None:
            return await super().json()
        if self._json is Empty:
            self._json = decode_body(await self.body(), body_type)
        return self._json
