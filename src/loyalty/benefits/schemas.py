"""Benefits at the API edge."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from loyalty.fields import Code, ExternalId, Reason, Reference, Strict

ConsumptionState = Literal["reserved", "committed", "released"]
BenefitType = Literal["flag", "quota", "discount", "multiplier", "gift", "upgrade"]
Texts = Annotated[
    dict[str, Annotated[str, Meta(max_length=2000)]],
    Meta(
        description='Text by language tag: {"en": "Free shipping", "zh-CN": "免运费"}; en and zh-CN required.'
    ),
]
Params = Annotated[dict[str, Any], Meta(description="The type's parameters (see docs/benefits.md).")]
Channel = Annotated[str, Meta(min_length=1, max_length=50)]


class BenefitCreate(Strict):
    code: Code
    type: BenefitType
    names: Texts
    descriptions: Texts = {}
    params: Params = {}
    channels: list[Channel] = []
    valid_from: datetime | None = None
    valid_until: datetime | None = None


class BenefitUpdate(Strict):
    names: Texts | None = None
    descriptions: Texts | None = None
    params: Params | None = None
    channels: list[Channel] | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    active: bool | None = None


class BenefitView(msgspec.Struct, kw_only=True):
    code: str
    type: str
    names: dict[str, str]
    descriptions: dict[str, str]
    params: dict[str, Any]
    channels: list[str]
    valid_from: datetime | None
    valid_until: datetime | None
    active: bool
    created_at: datetime
    updated_at: datetime


class BenefitList(msgspec.Struct):
    items: list[BenefitView]


class TierBenefitItem(Strict):
    benefit: Code
    params: Params = {}


class TierBenefitsSet(Strict):
    benefits: list[TierBenefitItem]


class TierBenefitView(msgspec.Struct, kw_only=True):
    tier: str
    benefit: str
    params: dict[str, Any]


class TierBenefitList(msgspec.Struct):
    items: list[TierBenefitView]


class CampaignCreate(Strict):
    code: Code
    segment: Code
    benefit: Code
    starts_at: datetime
    ends_at: datetime
    params: Params = {}


class CampaignView(msgspec.Struct, kw_only=True):
    code: str
    segment: str
    benefit: str
    starts_at: datetime
    ends_at: datetime
    params: dict[str, Any]
    # When benefit.granted went out for the members it started with (the worker's job).
    announced_at: datetime | None = None


class CampaignList(msgspec.Struct):
    items: list[CampaignView]


class GrantCreate(Strict):
    benefit: Code
    reason: Reason
    expires_at: datetime | None = None
    params: Params = {}


class GrantView(msgspec.Struct, kw_only=True):
    id: int
    member_id: str
    benefit: str
    granted_at: datetime
    expires_at: datetime | None


class RevokeRequest(Strict):
    reason: Reason


class SourceRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: str  # tier | segment | grant
    ref: str  # tier code, campaign code or grant id
    until: datetime | None = None


class SourceView(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: str  # tier | segment | grant | upgrade
    ref: str  # tier code, campaign code or grant id; for an upgrade the upgrade benefit's code
    params: dict[str, Any]
    until: datetime | None = None
    # kind "upgrade": the tier whose benefit this is, and where the member's upgrade comes from.
    tier: str | None = None
    via: SourceRef | None = None


class Entitlement(msgspec.Struct, kw_only=True):
    benefit: str
    type: str
    names: dict[str, str]
    params: dict[str, Any]
    source: SourceView
    sources: list[SourceView]
    channels: list[str]
    limit: int | None = None
    used: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None


class Entitlements(msgspec.Struct, kw_only=True):
    member_id: str
    tier: str | None
    items: list[Entitlement]


class CheckResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    member_id: str
    benefit: str
    allowed: bool
    reason: str
    source: SourceView | None = None
    params: dict[str, Any] | None = None
    limit: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None


class ConsumeRequest(Strict):
    member_id: ExternalId
    order_reference: Reference
    channel: Channel | None = None


class ReserveRequest(Strict):
    member_id: ExternalId
    order_reference: Reference
    channel: Channel | None = None
    hold_seconds: Annotated[int, Meta(ge=10, le=86_400)] = 900


class ConsumptionResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    member_id: str
    benefit: str
    order_reference: str
    state: ConsumptionState
    replayed: bool = False
    period_start: date | None = None
    limit: int | None = None
    remaining: int | None = None
    expires_at: datetime | None = None


class EntitledMembers(msgspec.Struct):
    items: list[str]
    next_cursor: str | None


class EntitledCount(msgspec.Struct, kw_only=True):
    benefit: str
    total: int
    by_tier: int
    by_segment: int
    by_grant: int
    by_upgrade: int


class Profile(msgspec.Struct, kw_only=True):
    member: Any
    balance: Any
    tier: str | None
    entitlements: list[Entitlement]
