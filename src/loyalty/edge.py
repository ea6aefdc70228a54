"""Checks every request passes before any route sees it: ids in range, no NUL, JSON bodies only,
and a body size limit. One ASGI middleware after routing, so that the lanes are covered too.

PostgreSQL refuses a NUL in text and a bigint beyond 64 bits; without these checks such input
reaches the database and comes back as a 500. The checks cost a few dictionary and byte
lookups per request: the hot lanes keep their one round trip.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import msgspec
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.exceptions import HTTPException
from litestar.params import PathParameter, QueryParameter

from loyalty.errors import InvalidInput, NotFound

BIGINT_MAX = 2**63 - 1
# One limit for every body; a route may raise it (batch earn) with request_max_body_size.
MAX_BODY = 1024 * 1024
# A body over the limit that declares its length is read and dropped up to this size, so the
# client finishes sending and reads the 413 instead of meeting a reset connection.
_DRAIN_LIMIT = 64 * 1024 * 1024

# A database id in a path (holds, transactions, tier versions, webhook endpoints ...).
PathId = Annotated[int, PathParameter(ge=1, le=BIGINT_MAX, description="A positive 64-bit id.")]
QueryId = Annotated[int, QueryParameter(ge=1, le=BIGINT_MAX, description="A positive 64-bit id.")]
# A ladder version is a 32-bit integer in the database.
PathVersion = Annotated[int, PathParameter(ge=1, le=2**31 - 1, description="A ladder version number.")]

# The kinds of ledger transaction a member's history can show (?kind=).
TransactionKind = Literal[
    "earn",
    "spend",
    "hold",
    "capture",
    "void",
    "hold_expiry",
    "clawback",
    "adjust",
    "transfer",
    "vest",
    "expire",
]


class UnsupportedMediaType(HTTPException):
    status_code = 415


class EdgeChecks:
    """ASGI middleware (app level, so it runs after routing and before authentication)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and not _is_preflight(scope["headers"]):
            # Litestar's own OPTIONS answer lists only some of a path's methods; a CORS
            # preflight (with Access-Control-Request-Method) still goes to Litestar's CORS.
            allow = _allowed_methods(scope)
            await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]})
            await send({"type": "http.response.body", "body": b""})
            return
        if "\x00" in scope["path"]:
            raise InvalidInput(_nul_path_field(scope), "must not contain a NUL character")
        for name, value in scope["path_params"].items():
            if type(value) is int and not -BIGINT_MAX - 1 <= value <= BIGINT_MAX:
                raise NotFound(f"No {name} {value}: ids are 64-bit integers.", code="not_found")
        query = scope["query_string"]
        if query and (b"%00" in query or b"\x00" in query):
            raise InvalidInput(_nul_query_field(query), "must not contain a NUL character")
        length = -1
        content_type = b""
        chunked = False
        for name, value in scope["headers"]:
            if b"\x00" in value:
                raise InvalidInput(name.decode("latin-1"), "must not contain a NUL character")
            if name == b"content-length":
                length = int(value) if value.isdigit() else 0
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if length > 0 or chunked:
            handler = scope["route_handler"]
            media_type = handler.opt.get("body_media_type")
            if media_type is not None:
                # A route that takes another body (the CSV imports, the console's forms) names
                # it, or a tuple of them, in its opt.
                accepted = (media_type,) if isinstance(media_type, str) else tuple(media_type)
                if content_type.split(b";", 1)[0].strip().lower().decode("latin-1") not in accepted:
                    raise UnsupportedMediaType(
                        detail=f"The body must be {' or '.join(accepted)}: send Content-Type: {accepted[0]}."
                    )
            elif not _is_json(content_type):
                raise UnsupportedMediaType(
                    detail="The body must be JSON: send Content-Type: application/json.",
                )
            limit = _body_limit(handler)
            if length > limit:
                if length <= _DRAIN_LIMIT:
                    await _drain(receive)
                raise HTTPException(status_code=413, detail=f"The body is larger than {limit} bytes.")
            if chunked:
                receive = _limited(receive, limit)
        await self.app(scope, receive, send)


def _is_preflight(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"access-control-request-method" for name, _ in headers)


_ALLOWED: dict[str, bytes] = {}


def _allowed_methods(scope: Any) -> bytes:
    if not _ALLOWED:
        for route in scope["litestar_app"].routes:
            methods = getattr(route, "methods", None)
            if methods:
                value = ", ".join(sorted(methods)).encode()
                _ALLOWED[route.path] = _ALLOWED[route.path_format] = value
    return _ALLOWED.get(scope.get("path_template", ""), b"OPTIONS")


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


_LIMITS: dict[Any, int] = {}


def _body_limit(handler: Any) -> int:
    limit = _LIMITS.get(handler)
    if limit is None:
        limit = _LIMITS[handler] = handler.resolve_request_max_body_size() or MAX_BODY
    return limit


async def _drain(receive: Any, budget: int = _DRAIN_LIMIT) -> None:
    """Read and drop the rest of a body (up to ``budget`` bytes)."""
    while budget > 0:
        message = await receive()
        budget -= len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _limited(receive: Any, limit: int) -> Any:
    """A receive that refuses a chunked body once it passes the limit."""
    size = 0

    async def receive_within_limit() -> Any:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            if message.get("more_body", False):
                await _drain(receive, _DRAIN_LIMIT - size)
            raise HTTPException(status_code=413, detail=f"The body is larger than {limit} bytes.")
        return message

    return receive_within_limit


def _nul_path_field(scope: Any) -> str:
    for name, value in scope["path_params"].items():
        if isinstance(value, str) and "\x00" in value:
            return str(name)
    return "path"


def _nul_query_field(query: bytes) -> str:
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "query"
    return "query"


def nul_field(value: Any, path: str = "") -> str | None:
    """The JSON path of the first string (or key) in a decoded body that holds a NUL."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return here.replace("\x00", "\\u0000")
            found = nul_field(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_field(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


# --- What the OpenAPI says about errors ---------------------------------------------------------

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem; 4xx answers name the field and the reason.",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "Stable, machine-readable."},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "field": {"type": "string"},
        "reason": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}
_ERRORS = {
    400: "The input is not valid: a field, parameter or header is named with the reason.",
    401: "No valid API key or member token.",
    403: "The caller's role may not do this.",
    404: "No such resource (or an id out of range).",
    409: "A conflict: the idempotency key was used with another body, or the state forbids it.",
    413: "The body is larger than the route's limit.",
    415: "The body is not JSON.",
    422: "Refused by a business rule (insufficient points, budget exhausted ...).",
    429: "Too many requests.",
    503: "A backing service is unavailable; retry later.",
}
_METHODS = ("get", "put", "post", "delete", "patch")


def document_problems(schema: dict[str, Any], public_paths: set[str]) -> dict[str, Any]:
    """Every operation documents its error answers as problem+json (not Litestar's default)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    reference = {"$ref": "#/components/schemas/Problem"}
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in _ERRORS.items():
                if status in (401, 403) and path in public_paths:
                    continue
                if status in (413, 415) and "requestBody" not in operation:
                    continue
                responses[str(status)] = {
                    "description": description,
                    "content": {PROBLEM_MEDIA_TYPE: {"schema": reference}},
                }
    return schema


class ProblemDocs(OpenAPIPlugin):
    """Litestar's OpenAPI plugin, with the error answers documented as they really are."""

    __slots__ = ()

    @classmethod
    def install(cls, app: Any) -> None:
        # Litestar always adds its own plugin; this one only adds a step after it builds the
        # schema (same slots, so the instance can take this class).
        app.plugins.get(OpenAPIPlugin).__class__ = cls

    def provide_openapi_schema(self) -> dict[str, Any]:
        if not self._openapi_schema:
            from loyalty.web import PUBLIC_PATHS

            schema = document_problems(self.provide_openapi().to_schema(), PUBLIC_PATHS)
            self._openapi_schema = close_objects(schema)
        return self._openapi_schema


def _closed_structs() -> dict[str, list[type[msgspec.Struct]]]:
    """Every Struct that refuses unknown fields, by the names Litestar may give its schema (the
    class name, or the module-qualified one when two share it)."""
    found: dict[str, list[type[msgspec.Struct]]] = {}
    pending = list(msgspec.Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__struct_config__.forbid_unknown_fields:
            for name in (cls.__name__, "_".join([*cls.__module__.split("."), cls.__name__])):
                found.setdefault(name, []).append(cls)
    return found


_BOUNDS = {
    "gt": "exclusiveMinimum",
    "ge": "minimum",
    "lt": "exclusiveMaximum",
    "le": "maximum",
    "multiple_of": "multipleOf",
    "min_length": "minLength",
    "max_length": "maxLength",
    "pattern": "pattern",
}
_ITEM_BOUNDS = {"min_length": "minItems", "max_length": "maxItems"}


def _bounds(annotation: Any) -> dict[str, Any]:
    """The limits msgspec enforces on a field, as JSON Schema keywords."""
    info = msgspec.inspect.type_info(annotation)
    if isinstance(info, msgspec.inspect.UnionType):
        others = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(others) != 1:
            return {}
        info = others[0]
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    names = _ITEM_BOUNDS if isinstance(info, msgspec.inspect.ListType | msgspec.inspect.DictType) else _BOUNDS
    if isinstance(info, msgspec.inspect.DictType):
        names = {"min_length": "minProperties", "max_length": "maxProperties"}
    return {
        keyword: value for attr, keyword in names.items() if (value := getattr(info, attr, None)) is not None
    }


def _document_bounds(properties: dict[str, Any], cls: type[msgspec.Struct]) -> None:
    """Litestar drops a zero lower bound and puts the limits of an optional field beside its
    oneOf instead of on the typed member: write msgspec's own limits where they belong."""
    for f in msgspec.structs.fields(cls):
        prop = properties.get(f.encode_name)
        bounds = _bounds(f.type)
        if prop is None or not bounds:
            continue
        typed = [m for m in prop.get("oneOf", ()) if m.get("type") not in (None, "null")]
        target = typed[0] if len(typed) == 1 else prop
        if target is not prop:
            for keyword in set(_BOUNDS.values()) | set(_ITEM_BOUNDS.values()):
                prop.pop(keyword, None)
        target.update(bounds)


def close_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """A body type that refuses unknown fields says so (``additionalProperties: false``), with
    every field's limits exactly as msgspec enforces them, so that a client or a test generator
    reading the document sends nothing the API would refuse as breaking it."""
    closed = _closed_structs()
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        properties = component.get("properties")
        if properties is None:
            continue
        for cls in closed.get(name, ()):
            if frozenset(properties) == frozenset(f.encode_name for f in msgspec.structs.fields(cls)):
                component["additionalProperties"] = False
                _document_bounds(properties, cls)
                break
    return schema
