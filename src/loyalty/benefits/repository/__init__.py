"""All SQL of benefits, by what it reads or writes:

- catalogue: definitions, tier benefits, campaign definitions, the catalogue version;
- sources: a member, their tier, the ladder in force, grants, running campaigns, usage;
- grants: individual grants and their revocation;
- consumption: the benefit_consume call, commit, release, reservations timing out;
- audience: who is entitled to a benefit, compiled to SQL;
- announcements: campaigns due to be announced, programmes with gifts;
- check: the checkout check's one statement.

The checkout check and benefit_consume run on a pooled asyncpg connection; the rest on the
request's SQLAlchemy connection. The names are re-exported here for ``repository.name``."""

from __future__ import annotations

from loyalty.benefits.repository.announcements import (
    announce_campaign,
    claim_campaign,
    due_campaigns,
    mark_announced,
    programmes_with_gifts,
)
from loyalty.benefits.repository.audience import (
    UpgradePath,
    entitled_count,
    entitled_members,
)
from loyalty.benefits.repository.catalogue import (
    all_benefits,
    all_campaigns,
    all_tier_benefits,
    benefit,
    bump_version,
    catalogue,
    catalogue_row,
    create_benefit,
    create_campaign,
    set_tier_benefits,
    tier_map,
    update_benefit,
    upgrade_benefits,
)
from loyalty.benefits.repository.check import (
    CHECK_SQL,
    check_row,
)
from loyalty.benefits.repository.consumption import (
    CONSUME_SQL,
    ConsumeCall,
    consume_in,
    consume_pooled,
    consumption,
    move_use,
    release_expired,
    route_to_member,
    set_consumption_state,
)
from loyalty.benefits.repository.grants import (
    grant_state,
    insert_grant,
    revoke_grant,
)
from loyalty.benefits.repository.sources import (
    active_campaigns,
    active_grants,
    external_id,
    ladder_ranks,
    ladder_tier_codes,
    member,
    member_tier,
    tier_benefit_params,
    usage_in,
)
from loyalty.benefits.repository.tables import (
    BENEFIT_COLUMNS,
    as_json,
    benefits,
    campaigns,
    consumptions,
    events,
    grants,
    member_tiers,
    members,
    tier_benefits,
    usage,
)

__all__ = [
    "BENEFIT_COLUMNS",
    "CHECK_SQL",
    "CONSUME_SQL",
    "ConsumeCall",
    "UpgradePath",
    "active_campaigns",
    "active_grants",
    "all_benefits",
    "all_campaigns",
    "all_tier_benefits",
    "announce_campaign",
    "as_json",
    "benefit",
    "benefits",
    "bump_version",
    "campaigns",
    "catalogue",
    "catalogue_row",
    "check_row",
    "claim_campaign",
    "consume_in",
    "consume_pooled",
    "consumption",
    "consumptions",
    "create_benefit",
    "create_campaign",
    "due_campaigns",
    "entitled_count",
    "entitled_members",
    "events",
    "external_id",
    "grant_state",
    "grants",
    "insert_grant",
    "ladder_ranks",
    "ladder_tier_codes",
    "mark_announced",
    "member",
    "member_tier",
    "member_tiers",
    "members",
    "move_use",
    "programmes_with_gifts",
    "release_expired",
    "revoke_grant",
    "set_consumption_state",
    "route_to_member",
    "set_tier_benefits",
    "tier_benefit_params",
    "tier_benefits",
    "tier_map",
    "update_benefit",
    "upgrade_benefits",
    "usage",
    "usage_in",
]
