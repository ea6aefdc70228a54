"""Members at the API edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from loyalty.fields import ExternalId, Strict

Attributes = Annotated[dict[str, Any], Meta(description="CRM attributes: any JSON object, at most 64 keys.")]


class MemberCreate(Strict, kw_only=True):
    member_id: ExternalId
    attributes: Attributes = {}


class MemberUpdate(Strict, kw_only=True):
    attributes: Attributes | None = None
    status: Literal["active", "suspended", "closed"] | None = None


class MemberView(msgspec.Struct):
    member_id: str
    status: str
    attributes: dict[str, Any]
    enrolled_at: datetime
    updated_at: datetime


class MemberPage(msgspec.Struct):
    items: list[MemberView]
    next_cursor: str | None
