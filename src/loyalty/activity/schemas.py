"""Member activity and earning rules at the API edge (msgspec, unknown fields refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from loyalty.fields import Code, ExpiryIn, ExternalId, Strict

EventId = Annotated[str, Meta(min_length=1, max_length=200, description="The sender's id of the event.")]
EventType = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
Money = Annotated[int, Meta(ge=0, le=10**13, description="Integer minor units (cents, fen).")]
Short = Annotated[str, Meta(min_length=1, max_length=200)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
Tag = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_:.-]{0,63}$")]


class Item(Strict, kw_only=True):
    sku: Short
    category: Short | None = None
    quantity: Annotated[int, Meta(ge=1, le=100_000)] = 1
    price: Money


class EventIn(Strict, kw_only=True):
    event_id: EventId
    member_id: ExternalId
    type: EventType
    occurred_at: datetime | None = None
    order_ref: Short | None = None
    amount: Money | None = None
    currency: Currency | None = None
    items: Annotated[list[Item], Meta(max_length=500)] | None = None
    channel: Short | None = None
    data: (
        Annotated[dict[str, Any], Meta(description="Free-form details (reviews, custom events).")] | None
    ) = None


class RuleOutcome(msgspec.Struct, omit_defaults=True):
    code: str
    fired: bool
    points: int
    reason: str
    requested: int = 0
    status: str | None = None  # earned / partial / pending / not_earned
    transaction_id: int | None = None
    condition: Any = None  # rules.explain of the condition against the member's facts


class ClawbackOutcome(msgspec.Struct):
    order_ref: str
    points: int
    reason: str
    transaction_id: int | None = None


class TierOutcome(msgspec.Struct):
    """A tier change the event caused (promotions happen in the same request)."""

    kind: str
    reason: str
    from_tier: str
    to_tier: str
    bonus: dict[str, Any] | None = None


class EventResult(msgspec.Struct):
    event_id: str
    member_id: str
    type: str
    occurred_at: datetime
    points: int
    rules: list[RuleOutcome]
    clawback: ClawbackOutcome | None
    facts: dict[str, Any]
    tier: TierOutcome | None = None
    simulated: bool = False


class ImportRequest(Strict, kw_only=True):
    events: Annotated[list[EventIn], Meta(min_length=1, max_length=10_000)]
    earn: bool = False


class ImportResult(msgspec.Struct):
    received: int
    imported: int
    duplicates: int
    members_refreshed: int
    points: int


class EventView(msgspec.Struct):
    event_id: str
    type: str
    occurred_at: datetime
    received_at: datetime
    order_ref: str | None
    amount: int | None
    currency: str | None
    channel: str | None
    points: int


class EventPage(msgspec.Struct):
    items: list[EventView]
    next_cursor: str | None


class FactsView(msgspec.Struct):
    member_id: str
    facts: dict[str, Any]
    window_kind: str
    window_months: int
    window_start: datetime | None
    first_order_at: datetime | None
    last_order_at: datetime | None
    updated_at: datetime | None


class TagsUpdate(Strict, kw_only=True):
    add: Annotated[list[Tag], Meta(max_length=100)] = []
    remove: Annotated[list[Tag], Meta(max_length=100)] = []


class TagsView(msgspec.Struct):
    member_id: str
    tags: list[str]


class ActivitySettingsIn(Strict, kw_only=True):
    window_kind: Literal["rolling_months", "calendar_year", "anniversary"] = "rolling_months"
    window_months: Annotated[int, Meta(ge=1, le=60)] = 12
    rfm: dict[str, list[int]] = {}
    lifecycle: dict[str, int] = {}
    custom_event_types: Annotated[list[EventType], Meta(max_length=100)] = []


class ActivitySettingsView(msgspec.Struct):
    window_kind: str
    window_months: int
    rfm: dict[str, Any]
    lifecycle: dict[str, Any]
    custom_event_types: list[str]


class EarningRuleIn(Strict, kw_only=True):
    code: Code
    name: Annotated[str, Meta(max_length=200)] = ""
    event_type: EventType
    condition: Any = True
    event_filter: dict[str, Any] = {}
    formula: dict[str, Any]
    cap_per_day: Annotated[int, Meta(ge=1, le=10**12)] | None = None
    cap_per_month: Annotated[int, Meta(ge=1, le=10**12)] | None = None
    budget: Code
    pending_days: Annotated[int, Meta(ge=0, le=365)] = 0
    expiry: ExpiryIn | None = None
    qualifying: bool = True
    priority: Annotated[int, Meta(ge=0, le=10_000)] = 100
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class EarningRulePatch(Strict, kw_only=True):
    name: Annotated[str, Meta(max_length=200)] | None = None
    condition: Any = None
    event_filter: dict[str, Any] | None = None
    formula: dict[str, Any] | None = None
    cap_per_day: Annotated[int, Meta(ge=0, le=10**12)] | None = None
    cap_per_month: Annotated[int, Meta(ge=0, le=10**12)] | None = None
    budget: Code | None = None
    pending_days: Annotated[int, Meta(ge=0, le=365)] | None = None
    expiry: ExpiryIn | None = None
    qualifying: bool | None = None
    priority: Annotated[int, Meta(ge=0, le=10_000)] | None = None
    active: bool | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class EarningRuleView(msgspec.Struct):
    code: str
    name: str
    event_type: str
    condition: Any
    event_filter: dict[str, Any]
    formula: dict[str, Any]
    cap_per_day: int | None
    cap_per_month: int | None
    budget: str
    pending_days: int
    expiry: dict[str, Any] | None
    qualifying: bool
    priority: int
    active: bool
    starts_at: datetime | None
    ends_at: datetime | None
    created_at: datetime
    updated_at: datetime
