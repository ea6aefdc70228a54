"""The use cases of benefits, by what they do, under the one name other packages import:

- catalogue: benefit definitions and what each tier includes;
- campaigns: segment campaigns and their announcements;
- grants: individual grants and revocations;
- entitlements: what a member has now, and from which source;
- consumption: consume, reserve, commit and release for an order;
- gifts: one-time gift points on birthdays;
- audience: who is entitled to a benefit (marketing).

None of them commits: the caller's transaction (web.provide_tx, or a worker task) owns it.
"""

from __future__ import annotations

from loyalty.benefits.audience import entitled_count, entitled_members
from loyalty.benefits.campaigns import announce_campaign, create_campaign, list_campaigns
from loyalty.benefits.catalogue import (
    REQUIRED_LANGUAGES,
    create,
    get,
    list_all,
    list_tier_benefits,
    override_params,
    set_tier_benefits,
    update,
)
from loyalty.benefits.consumption import consume, consume_with, release_expired, settle
from loyalty.benefits.entitlements import (
    entitlements,
    member_entitlements,
    multiplier_for,
    parsed_rule,
    source_ref,
    source_view,
)
from loyalty.benefits.gifts import grant_gifts
from loyalty.benefits.grants import grant, revoke

__all__ = [
    "REQUIRED_LANGUAGES",
    "announce_campaign",
    "consume",
    "consume_with",
    "create",
    "create_campaign",
    "entitled_count",
    "entitled_members",
    "entitlements",
    "get",
    "grant",
    "grant_gifts",
    "list_all",
    "list_campaigns",
    "list_tier_benefits",
    "member_entitlements",
    "multiplier_for",
    "override_params",
    "parsed_rule",
    "release_expired",
    "revoke",
    "set_tier_benefits",
    "settle",
    "source_ref",
    "source_view",
    "update",
]
