"""Programmes: created by an installation's administrator (CLI or demo), tuned by operators."""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.errors import Conflict, InvalidInput
from loyalty.http.principal import Principal
from loyalty.ledger import repository as ledger
from loyalty.programmes import repository

CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
POLICIES = ("negative", "clamp")


def check_settings(
    *, timezone: str | None = None, clawback_policy: str | None = None, currency: str | None = None
) -> None:
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput("timezone", "is not an IANA time zone name") from None
    if clawback_policy is not None and clawback_policy not in POLICIES:
        raise InvalidInput("clawback_policy", "must be 'negative' or 'clamp'")
    if currency is not None and not re.fullmatch(r"[A-Z]{3}", currency):
        raise InvalidInput("currency", "must be an ISO 4217 code such as CNY")


async def create_programme(
    conn: AsyncConnection,
    *,
    code: str,
    name: str,
    currency: str = "CNY",
    timezone: str = "UTC",
    clawback_policy: str = "negative",
    allow_transfers: bool = False,
    who: str = "system",
) -> int:
    """``who`` names the creator in the audit trail: "cli", or "system" for the demo and tests."""
    if not CODE.match(code):
        raise InvalidInput("code", "lowercase letters, digits, '-' and '_', at most 63")
    check_settings(timezone=timezone, clawback_policy=clawback_policy, currency=currency)
    if await repository.by_code(conn, code) is not None:
        raise Conflict(f"Programme {code!r} exists.", code="programme_exists")
    programme_id = await repository.insert(
        conn,
        code=code,
        name=name,
        currency=currency,
        timezone=timezone,
        clawback_policy=clawback_policy,
        allow_transfers=allow_transfers,
    )
    await ledger.open_programme(conn, programme_id)
    await audit.record(
        conn,
        who,
        action="programme.create",
        entity="programme",
        entity_id=code,
        after=await repository.by_id(conn, programme_id),
        programme_id=programme_id,
    )
    return programme_id


async def update_programme(
    conn: AsyncConnection, programme_id: int, changes: dict[str, Any], *, who: Principal | str
) -> dict[str, Any]:
    check_settings(**{k: v for k, v in changes.items() if k in ("timezone", "clawback_policy")})
    before = await repository.by_id(conn, programme_id)
    await repository.update(conn, programme_id, changes)
    after = await repository.by_id(conn, programme_id)
    await audit.record(
        conn,
        who,
        action="programme.update",
        entity="programme",
        entity_id=after["code"],
        before=before,
        after=after,
        programme_id=programme_id,
    )
    return after
