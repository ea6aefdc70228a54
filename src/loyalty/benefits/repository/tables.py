"""The tables benefits' SQL reads and writes, and what the modules beside this one share."""

from __future__ import annotations

from typing import Any, cast

import msgspec
from sqlalchemy import Table

from loyalty.benefits.models import (
    Benefit,
    BenefitCampaign,
    BenefitConsumption,
    BenefitGrant,
    BenefitUsage,
    TierBenefit,
)
from loyalty.members.models import Member
from loyalty.outbox.models import DomainEvent
from loyalty.tiers.models import MemberTier

benefits = cast(Table, Benefit.__table__)
tier_benefits = cast(Table, TierBenefit.__table__)
campaigns = cast(Table, BenefitCampaign.__table__)
grants = cast(Table, BenefitGrant.__table__)
usage = cast(Table, BenefitUsage.__table__)
consumptions = cast(Table, BenefitConsumption.__table__)
members = cast(Table, Member.__table__)
member_tiers = cast(Table, MemberTier.__table__)
events = cast(Table, DomainEvent.__table__)

BENEFIT_COLUMNS = (
    benefits.c.id,
    benefits.c.code,
    benefits.c.type,
    benefits.c.names,
    benefits.c.descriptions,
    benefits.c.params,
    benefits.c.channels,
    benefits.c.valid_from,
    benefits.c.valid_until,
    benefits.c.active,
    benefits.c.created_at,
    benefits.c.updated_at,
)


def as_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
