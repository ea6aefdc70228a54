"""API keys at the API edge: never the secret, only its public prefix."""

from __future__ import annotations

from datetime import datetime

import msgspec


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
