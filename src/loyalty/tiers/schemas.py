"""Tiers at the API edge: ladder versions, pins, a member's tier and its history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from loyalty.fields import Code, Points, Reason, Strict

RuleJson = Annotated[Any, Meta(description="A rule of the rule language (see loyalty.rules).")]


class ValidityIn(Strict, kw_only=True):
    months: Annotated[int, Meta(ge=1, le=120)] | None = None
    round_to: Literal["none", "month", "year"] = "none"


class BonusIn(Strict, kw_only=True):
    budget: Code
    points: Points


class TierIn(Strict, kw_only=True):
    code: Code
    name: Annotated[str, Meta(max_length=200)] = ""
    rank: Annotated[int, Meta(ge=0, le=100)]
    entry: RuleJson = True
    # Omitted: the entry rule also keeps the tier.
    retention: RuleJson | None = None
    validity: ValidityIn = msgspec.field(default_factory=ValidityIn)
    downgrade_policy: Literal["one_step", "to_qualified"] = "one_step"
    grace_days: Annotated[int, Meta(ge=0, le=3650)] = 0
    bonus: BonusIn | None = None


class LadderCreate(Strict, kw_only=True):
    tiers: Annotated[list[TierIn], Meta(min_length=1, max_length=20)]
    note: Annotated[str, Meta(max_length=1000)] = ""


class PublishRequest(Strict, kw_only=True):
    effective_at: datetime | None = None
    # Also re-assess every member against the new ladder once it is in force (an arq job,
    # enqueued after the publish has committed, deferred to effective_at).
    reassess: bool = False


class ReassessQueued(msgspec.Struct, kw_only=True):
    job_id: str
    status: str = "queued"
    # Where the job's status is read (also the answer's Location header).
    status_url: str | None = None
    run_at: datetime | None = None


class VersionView(msgspec.Struct, kw_only=True):
    version: int
    status: str
    note: str
    effective_at: datetime | None
    published_at: datetime | None
    created_at: datetime
    created_by: str
    # The qualification window is the programme's activity setting (activity_settings).
    qualification_window: dict[str, Any]
    tiers: list[dict[str, Any]]


class VersionList(msgspec.Struct):
    items: list[VersionView]


class Mover(msgspec.Struct, kw_only=True):
    member_id: str
    from_tier: str
    to_tier: str
    facts: dict[str, Any]


class BacktestView(msgspec.Struct, kw_only=True):
    version: int
    members: int
    up: int
    down: int
    stay: int
    by_tier: dict[str, int]
    sample: list[Mover]


class MoverPage(msgspec.Struct, kw_only=True):
    """One page of a backtest's movers; pass next_cursor (a member id) back for the next."""

    items: list[Mover]
    next_cursor: str | None


class PinRequest(Strict, kw_only=True):
    kind: Literal["floor", "fixed"]
    tier: Code
    until: datetime | None = None
    reason: Reason


class UnpinRequest(Strict, kw_only=True):
    reason: Reason


class PinView(msgspec.Struct, kw_only=True):
    kind: str
    tier: str
    until: datetime | None
    reason: str


class RuleProgress(msgspec.Struct, kw_only=True):
    tier: str
    rule: Literal["entry", "retention"]
    met: bool
    explanation: dict[str, Any]


class ChangeView(msgspec.Struct, kw_only=True):
    kind: str
    reason: str
    from_tier: str | None
    to_tier: str | None


class MemberTierView(msgspec.Struct, kw_only=True):
    member_id: str
    tier: str
    rank: int
    ladder_version: int
    achieved_at: datetime | None
    valid_until: datetime | None
    grace_until: datetime | None
    pin: PinView | None
    next_assessment_at: datetime | None
    next_tier: str | None
    progress: RuleProgress | None  # the next tier's entry rule, explained
    keep: RuleProgress | None  # the current tier's retention rule, explained
    change: ChangeView | None = None  # set by the assess and pin endpoints


class HistoryItem(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    kind: str
    reason: str
    from_tier: str | None
    to_tier: str | None
    ladder_version: int | None
    trace: dict[str, Any]
    facts: dict[str, Any]
    actor: str


class HistoryPage(msgspec.Struct):
    items: list[HistoryItem]


class Gap(msgspec.Struct, kw_only=True):
    fact: str
    needed: int


class MyTierView(msgspec.Struct, kw_only=True):
    """The customer's view: their tier and, compactly, what the next one and keeping this take."""

    tier: str
    valid_until: datetime | None
    grace_until: datetime | None
    next_tier: str | None
    next_tier_met: bool
    next_tier_gaps: list[Gap]
    keep_met: bool
    keep_gaps: list[Gap]
