"""The API's shared field types: the strict body base and the constrained values many schemas
use (member ids, codes, points, reasons, references, expiry). msgspec only: no I/O."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Points = Annotated[int, Meta(ge=1, le=10**12, description="Whole points, at least 1.")]
ExternalId = Annotated[str, Meta(min_length=1, max_length=128, description="The brand's own customer id.")]
Reference = Annotated[
    str, Meta(min_length=1, max_length=200, description="An external reference, e.g. an order id.")
]
Reason = Annotated[str, Meta(min_length=1, max_length=500)]
Code = Annotated[
    str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="lowercase code, e.g. 'spring-2026'")
]


# A request body: unknown fields are refused, every field is keyword-only. (No docstring: a
# subclass without one would show it in OpenAPI.)
class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ExpiryIn(Strict, kw_only=True):
    days: Annotated[
        int, Meta(ge=1, le=3650, description="Points expire this many days after they are earned.")
    ]
    round_to: Literal["none", "month", "quarter", "year"] = "none"
