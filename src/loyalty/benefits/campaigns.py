"""Segment campaigns: members of a segment get a benefit from starts_at to ends_at; started
campaigns are announced once (benefit.granted per member of the segment)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.benefits import core, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.catalogue import load_benefit, source_params, to_def
from loyalty.benefits.entitlements import parsed_rule
from loyalty.errors import InvalidInput, NotFound
from loyalty.http.principal import Principal
from loyalty.segments import repository as segments


async def create_campaign(conn: AsyncConnection, who: Principal, req: s.CampaignCreate) -> s.CampaignView:
    if req.ends_at <= req.starts_at:
        raise InvalidInput("ends_at", "must be after starts_at")
    if await segments.get(conn, who.programme_id, req.segment) is None:
        raise NotFound("No segment with this code.", code="segment_not_found", extra={"code": req.segment})
    benefit = await load_benefit(conn, who, req.benefit)
    params = await source_params(conn, who, benefit, req.params, "params")
    row = await repository.create_campaign(
        conn,
        who.programme_id,
        {
            "code": req.code,
            "segment": req.segment,
            "benefit_id": benefit.id,
            "starts_at": req.starts_at,
            "ends_at": req.ends_at,
            "params": params,
        },
    )
    view = s.CampaignView(benefit=req.benefit, **row)
    await audit.record(
        conn, who, action="benefit_campaign.create", entity="benefit_campaign", entity_id=req.code, after=view
    )
    return view


async def list_campaigns(conn: AsyncConnection, who: Principal) -> s.CampaignList:
    return s.CampaignList(
        items=[s.CampaignView(**r) for r in await repository.all_campaigns(conn, who.programme_id)]
    )


async def announce_campaign(
    conn: AsyncConnection, programme_id: int, campaign_id: int, now: datetime
) -> int | None:
    """A started campaign's benefit.granted events, one per active member of its segment now
    (one INSERT ... SELECT, written only if an endpoint subscribes), and the campaign marked
    announced, both in the caller's transaction: announced once however often this runs.
    Returns the events written, or None when nothing was done (another run holds the campaign
    or announced it, or its benefit is not giving yet: see core.announcement)."""
    row = await repository.claim_campaign(conn, programme_id, campaign_id, now)
    if row is None:
        return None
    benefit = to_def(
        {**row, "code": row["benefit"], "params": row["benefit_params"], "names": {}, "descriptions": {}}
    )
    what = core.announcement(benefit, row["ends_at"], now)
    if what == "wait":
        return None
    written = 0
    if what == "announce" and row["rule"] is not None:  # a campaign whose segment is gone gives nothing
        payload = {
            "benefit": benefit.code,
            "source": {"kind": "segment", "ref": row["code"]},
            "params": core.merged(benefit.params, dict(row["params"])),
            "expires_at": row["ends_at"].isoformat(),
        }
        rule = parsed_rule(msgspec.json.encode(row["rule"]).decode())
        written = await repository.announce_campaign(conn, programme_id, rule, payload, now)
    await repository.mark_announced(conn, programme_id, campaign_id, now)
    return written
