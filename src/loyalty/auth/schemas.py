"""API keys at the API edge: never the secret, only its public prefix."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from loyalty.fields import ExternalId, Strict


class KeyView(msgspec.Struct):
    id: int
    prefix: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


class KeyList(msgspec.Struct):
    items: list[KeyView]


def view(row: dict) -> KeyView:
    return KeyView(
        id=row["id"],
        prefix=row["prefix"],
        name=row["name"],
        role=row["role"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class TokenRequest(Strict, kw_only=True):
    member_id: ExternalId
    ttl_seconds: Annotated[int, Meta(ge=60, le=86_400)] = 3600


class TokenView(msgspec.Struct):
    token: str
    member_id: str
    expires_at: datetime
