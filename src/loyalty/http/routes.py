"""What the route modules of every domain share: the request's connection as a dependency,
and the role sets and guards of the API."""

from __future__ import annotations

from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec

from loyalty.http.lanes import allow, provide_posting, provide_read, provide_tx

WRITE = {"tx": Provide(provide_tx)}
# Routes whose write is a single posting-function call (see lanes.provide_posting).
POSTING = {"tx": Provide(provide_posting)}
READ = {"tx": Provide(provide_read)}
ECOMMERCE_ROLES = ("ecommerce", "operator")
GRANTS_ROLES = ("ecommerce", "marketing", "operator")
STAFF_ROLES = ("operator", "ecommerce", "crm", "marketing")
ECOMMERCE = allow(*ECOMMERCE_ROLES)
GRANTS = allow(*GRANTS_ROLES)
STAFF_READ = allow(*STAFF_ROLES)


def posted_spec(model: type, status: int = 201) -> dict[int, ResponseSpec]:
    """The documented answer of an idempotent write (a replay says Idempotent-Replayed)."""
    return {
        status: ResponseSpec(data_container=model, description="Posted (or replayed: Idempotent-Replayed)")
    }
