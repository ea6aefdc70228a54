"""Domain errors shared by every domain. They know nothing of HTTP; problems.py maps them."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request the domain refuses. ``code`` is stable and machine-readable."""

    code: str = "domain_error"

    def __init__(self, detail: str, *, code: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra or {}


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Unprocessable(DomainError):
    """Well-formed but refused by a business rule (insufficient points, budget exhausted ...)."""

    code = "unprocessable"


class InvalidInput(DomainError):
    """A field is wrong in a way the schema could not say; ``field`` names it."""

    code = "invalid_input"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(
            f"{field}: {reason}",
            extra={"field": field, "reason": reason, "errors": [{"field": field, "reason": reason}]},
        )
        self.field = field
        self.reason = reason


class Forbidden(DomainError):
    code = "forbidden"


class Unauthorized(DomainError):
    code = "unauthorized"
