"""Helpers shared by the tests: a fresh programme with a key per role, and idempotency keys."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.auth.service import create_api_key
from loyalty.programmes.service import create_programme

_counter = itertools.count()


@dataclass
class Programme:
    id: int
    code: str
    keys: dict[str, str] = field(default_factory=dict)

    def headers(self, role: str, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}", "Idempotency-Key": key or new_key()}


def new_key() -> str:
    return uuid.uuid4().hex


async def make_programme(
    engine: AsyncEngine,
    *,
    clawback_policy: str = "negative",
    allow_transfers: bool = True,
    timezone: str = "UTC",
) -> Programme:
    code = f"p{uuid.uuid4().hex[:12]}{next(_counter)}"
    async with engine.begin() as conn:
        programme_id = await create_programme(
            conn,
            code=code,
            name=code,
            currency="CNY",
            timezone=timezone,
            clawback_policy=clawback_policy,
            allow_transfers=allow_transfers,
        )
        programme = Programme(id=programme_id, code=code)
        for role in ("operator", "ecommerce", "crm", "marketing"):
            _, programme.keys[role] = await create_api_key(conn, programme_id=programme_id, role=role)
    return programme
