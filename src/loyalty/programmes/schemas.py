"""Programme settings at the API edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from loyalty.fields import Strict


class ProgrammeView(msgspec.Struct):
    code: str
    name: str
    currency: str
    timezone: str
    clawback_policy: str
    allow_transfers: bool
    created_at: datetime


class ProgrammeUpdate(Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    clawback_policy: Literal["negative", "clamp"] | None = None
    allow_transfers: bool | None = None
