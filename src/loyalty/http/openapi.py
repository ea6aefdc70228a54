"""What the OpenAPI says about errors and bodies: every operation documents its error answers
as RFC 9457 problem+json, as they really are, and a body that refuses unknown fields says so,
with msgspec's own limits, instead of Litestar's defaults."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar._openapi.plugin import OpenAPIPlugin

from loyalty.http.lanes import PUBLIC_PATHS

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
