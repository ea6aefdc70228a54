"""What the OpenAPI says about errors: every operation documents its error answers as RFC 9457
problem+json, as they really are, instead of Litestar's default error schema."""

from __future__ import annotations

from typing import Any

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
            self._openapi_schema = document_problems(self.provide_openapi().to_schema(), PUBLIC_PATHS)
        return self._openapi_schema
