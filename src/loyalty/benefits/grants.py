"""Individual grants of a benefit to a member (operator or CRM), with a reason and an optional
expiry, and their revocation."""

from __future__ import annotations

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.benefits import core, events, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.catalogue import load_benefit, source_params, utcnow
from loyalty.benefits.entitlements import member_id_of
from loyalty.errors import InvalidInput, NotFound
from loyalty.http.principal import Principal


async def grant(conn: AsyncConnection, who: Principal, external_id: str, req: s.GrantCreate) -> s.GrantView:
    now = utcnow()
    if req.expires_at is not None and req.expires_at <= now:
        raise InvalidInput("expires_at", "must be in the future")
    member_id = await member_id_of(conn, who, external_id)
    benefit = await load_benefit(conn, who, req.benefit)
    params = await source_params(conn, who, benefit, req.params, "params")
    row = await repository.insert_grant(
        conn,
        who.programme_id,
        {
            "member_id": member_id,
            "benefit_id": benefit.id,
            "params": params,
            "reason": req.reason,
            "actor": who.actor,
            "expires_at": req.expires_at,
        },
    )
    await events.emit(
        conn,
        who.programme_id,
        "benefit.granted",
        f"member:{external_id}",
        {
            "member_id": external_id,
            "benefit": benefit.code,
            "source": {"kind": "grant", "ref": str(row["id"])},
            "params": core.merged(benefit.params, params),
            "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
            "reason": req.reason,
        },
    )
    view = s.GrantView(
        id=row["id"],
        member_id=external_id,
        benefit=benefit.code,
        granted_at=row["granted_at"],
        expires_at=row["expires_at"],
    )
    await audit.record(
        conn,
        who,
        action="member.benefit_grant",
        entity="member",
        entity_id=external_id,
        after={**msgspec.to_builtins(view), "params": params},
        reason=req.reason,
    )
    return view


async def revoke(
    conn: AsyncConnection, who: Principal, external_id: str, grant_id: int, req: s.RevokeRequest
) -> None:
    member_id = await member_id_of(conn, who, external_id)
    before = await repository.grant_state(conn, who.programme_id, member_id, grant_id)
    row = await repository.revoke_grant(conn, who.programme_id, member_id, grant_id, req.reason, utcnow())
    if row is None or before is None:
        raise NotFound("No such grant for this member.", code="grant_not_found", extra={"grant_id": grant_id})
    await audit.record(
        conn,
        who,
        action="member.benefit_revoke",
        entity="member",
        entity_id=external_id,
        before=before,
        after=await repository.grant_state(conn, who.programme_id, member_id, grant_id),
        reason=req.reason,
    )
