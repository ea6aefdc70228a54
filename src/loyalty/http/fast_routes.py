"""Hot routes, each declared once: the declaration is both the lane that serves the route and
the Litestar handler that documents it.

A hot route (an earn, a hold, a member event, the checkout check) is served by a route-level
ASGI middleware, its *lane*, after routing and authentication: it checks the role, the path
and query values, the Idempotency-Key header and the body, makes one call into the domain and
sends the domain's JSON, without Litestar's per-request dependency injection, signature model
and response machinery (about half the API's CPU per earn). The handler behind the lane is
generated from the same declaration, so OpenAPI documents exactly the roles, the parameters
with their limits, the body type, the status and the headers that the lane enforces: the
limits are read from the very annotations the handler carries. The handler's body never runs.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import asyncpg
from litestar import Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers.http_handlers import HTTPRouteHandler
from litestar.middleware.base import DefineMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, KwargDefinition
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.http.lanes import (
    JSON,
    Answer,
    IdempotencyKey,
    InvalidRequest,
    allow,
    db_deadline,
    decode_body,
    require_role,
)
from loyalty.http.principal import Principal

# How a lane gets its connection: "posting" — a pooled asyncpg connection, the call one
# autocommit statement; "grouped" — a single posting that goes through the process's group
# committer when group commit is on (ledger/group_commit.py), else as "posting"; "transaction" — a SQLAlchemy transaction committed before the answer;
# "read" — a pooled asyncpg connection for a read.
Connection = Literal["posting", "grouped", "transaction", "read"]
DEFAULT_MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Arguments:
    """What a lane hands the domain call: the decoded body, the idempotency key, the path and
    query values (checked), and the app state (caches)."""

    body: Any
    key: str | None
    path: Mapping[str, Any]
    query: Mapping[str, str | None]
    state: State


@dataclass(frozen=True, slots=True)
class Reply:
    """A lane's answer built in Python: its JSON, and whether it replays an earlier write."""

    replayed: bool
    body: bytes


Call = Callable[[Any, Principal, Arguments], Awaitable[Answer]]


@dataclass(frozen=True, kw_only=True)
class FastRoute:
    """One hot route. ``path_params`` and ``query`` map names to annotations carrying Litestar
    ``PathParameter``/``QueryParameter`` limits: the handler documents them, the lane enforces
    them."""

    method: Literal["GET", "POST"]
    path: str
    summary: str
    roles: tuple[str, ...]
    result: type
    call: Call
    body: type | None = None
    path_params: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, Any] = field(default_factory=dict)
    status: int = 201
    idempotent: bool = True
    connection: Connection = "posting"
    max_body: int = DEFAULT_MAX_BODY
    tags: tuple[str, ...] = ()
    description: str = "Posted (or replayed: Idempotent-Replayed)"

    def handler(self) -> HTTPRouteHandler:
        """The Litestar handler: routed, documented and served by the lane."""
        decorator = post if self.method == "POST" else get
        return decorator(
            self.path,
            guards=[allow(*self.roles)],
            middleware=[DefineMiddleware(FastLane, route=self)],
            responses={self.status: ResponseSpec(data_container=self.result, description=self.description)},
            status_code=self.status,
            request_max_body_size=self.max_body if self.body is not None else None,
            tags=list(self.tags) or None,
        )(self._documented())

    def _documented(self) -> Callable[..., Awaitable[Response[bytes]]]:
        async def documented(**_: Any) -> Response[bytes]:  # pragma: no cover - the lane answers
            raise NotImplementedError

        parameters: list[inspect.Parameter] = []
        annotations: dict[str, Any] = {}

        def add(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> None:
            parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default))
            annotations[name] = annotation

        for name, annotation in self.path_params.items():
            add(name, annotation)
        for name, annotation in self.query.items():
            add(name, annotation, None if _optional(annotation) else inspect.Parameter.empty)
        if self.body is not None:
            add("data", Annotated[self.body, Body(media_type=JSON)])
        if self.idempotent:
            add("idempotency_key", IdempotencyKey)
        annotations["return"] = Response[bytes]
        documented.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        documented.__annotations__ = annotations
        documented.__doc__ = self.summary
        name = self.path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(":", "_")
        documented.__name__ = documented.__qualname__ = f"{self.method.lower()}_{name}"
        return documented


def _limits(annotation: Any) -> KwargDefinition | None:
    return next((m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, KwargDefinition)), None)


def _optional(annotation: Any) -> bool:
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    return type(None) in typing.get_args(base)


def _checked_text(name: str, value: str | None, annotation: Any) -> str | None:
    limits = _limits(annotation)
    if value is None or value == "":
        if _optional(annotation):
            return None
        value = ""
    low = (limits.min_length if limits else None) or 0
    high = limits.max_length if limits else None
    if len(value) < low or (high is not None and len(value) > high):
        bounds = f"{low} to {high} characters" if high is not None else f"at least {low} characters"
        raise InvalidRequest(name, f"must be {bounds}" if value else f"is required ({bounds})")
    return value


def _checked_number(name: str, value: Any, annotation: Any) -> Any:
    limits = _limits(annotation)
    if (
        limits is not None
        and isinstance(value, int)
        and ((limits.ge is not None and value < limits.ge) or (limits.le is not None and value > limits.le))
    ):
        raise InvalidRequest(name, f"must be between {limits.ge} and {limits.le}")
    return value


_IDEMPOTENCY_HEADER = b"idempotency-key"
_KEY_LIMITS = _limits(IdempotencyKey)


def _idempotency_key(headers: list[tuple[bytes, bytes]]) -> str:
    low = (_KEY_LIMITS.min_length if _KEY_LIMITS else None) or 1
    high = (_KEY_LIMITS.max_length if _KEY_LIMITS else None) or 200
    for name, value in headers:
        if name == _IDEMPOTENCY_HEADER:
            key = value.decode("latin-1")
            if not low <= len(key) <= high:
                raise InvalidRequest(
                    "Idempotency-Key", f"must be {low} to {high} characters (idempotency key)"
                )
            return key
    raise InvalidRequest("Idempotency-Key", "this header is required on every write")


class FastLane:
    """The ASGI middleware serving one FastRoute. Errors are raised, so they go through the one
    problem map like any route's; the answer is sent only after the call returned, and for a
    write the call has committed by then."""

    def __init__(self, app: Any, *, route: FastRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.route
        principal: Principal = scope["user"]
        require_role(principal, route.roles)
        path = {
            name: _checked_number(name, scope["path_params"][name], annotation)
            for name, annotation in route.path_params.items()
        }
        query: dict[str, str | None] = {}
        if route.query:
            raw = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            query = {name: _checked_text(name, raw.get(name), ann) for name, ann in route.query.items()}
        body = decode_body(await read_body(receive, route.max_body), route.body) if route.body else None
        key = _idempotency_key(scope["headers"]) if route.idempotent else None
        state: State = scope["litestar_app"].state
        arguments = Arguments(body, key, path, query, state)
        committer = getattr(state, "committer", None) if route.connection == "grouped" else None
        # One deadline for the whole database part (queue, pool, connect, statements): with
        # PostgreSQL hung, each wait alone is bounded, but one after another they would add up.
        # Past it the answer is a 503 (TimeoutError); a write that reached the server may still
        # commit, and its retry with the same Idempotency-Key replays it.
        async with asyncio.timeout_at(db_deadline(scope)):
            if committer is not None:
                # Group commit: the call joins the process's next batch, returns once it committed.
                result = await route.call(committer, principal, arguments)
            elif route.connection == "transaction":
                engine: AsyncEngine = state.engine
                async with engine.connect() as conn, conn.begin():
                    result = await route.call(conn, principal, arguments)
            else:
                pool: asyncpg.Pool = state.posting_pool
                async with pool.acquire(timeout=state.pool_timeout) as conn:
                    result = await route.call(conn, principal, arguments)
        replayed = [(b"idempotent-replayed", b"true")] if result.replayed else None
        await send_json(send, route.status, result.body, replayed)


async def send_json(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole JSON response on a lane's raw ASGI ``send``."""
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Any, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=f"The body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class ClientDisconnected(Exception):
    """The client went away before its body arrived; nothing was written."""


def handlers(*routes: FastRoute) -> list[HTTPRouteHandler]:
    return [route.handler() for route in routes]
