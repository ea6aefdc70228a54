"""The ledger's API edge: request and response bodies (msgspec, unknown fields refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from loyalty.fields import Code, ExpiryIn, ExternalId, Points, Reason, Reference, Strict

SignedPoints = Annotated[int, Meta(ge=-(10**12), le=10**12, description="Signed points: + credit, - debit.")]
Metadata = Annotated[dict[str, Any], Meta(description="Free-form JSON kept with the transaction.")]


class EarnRequest(Strict, kw_only=True):
    member_id: ExternalId
    budget: Code
    points: Points
    reference: Reference | None = None
    reason: Reason | None = None
    allow_partial: bool = False
    pending_days: Annotated[int, Meta(ge=0, le=365)] | None = None
    expiry: ExpiryIn | None = None
    metadata: Metadata | None = None


class SpendRequest(Strict, kw_only=True):
    member_id: ExternalId
    points: Points
    reference: Reference | None = None
    reason: Reason | None = None
    metadata: Metadata | None = None


class HoldRequest(Strict, kw_only=True):
    member_id: ExternalId
    points: Points
    reference: Reference | None = None
    timeout_seconds: Annotated[int, Meta(ge=1, le=7 * 24 * 3600)] = 900


class CaptureRequest(Strict, kw_only=True):
    points: Annotated[int, Meta(ge=0, le=10**12)] | None = None


class ClawbackRequest(Strict, kw_only=True):
    member_id: ExternalId
    reference: Reference
    points: Points | None = None
    reason: Reason | None = None


class AdjustRequest(Strict, kw_only=True):
    member_id: ExternalId
    points: SignedPoints
    reason: Reason
    expiry: ExpiryIn | None = None
    unit_cost_micros: Annotated[int, Meta(ge=0, le=10**9)] = 0


class TransferRequest(Strict, kw_only=True):
    from_member_id: ExternalId
    to_member_id: ExternalId
    points: Points
    reason: Reason | None = None


class BatchEarnItem(Strict, kw_only=True):
    member_id: ExternalId
    budget: Code
    points: Points
    reference: Reference | None = None
    reason: Reason | None = None
    pending_days: Annotated[int, Meta(ge=0, le=365)] | None = None
    expiry: ExpiryIn | None = None


class BatchEarnRequest(Strict, kw_only=True):
    items: Annotated[list[BatchEarnItem], Meta(min_length=1, max_length=50_000)]
    mode: Literal["all_or_nothing", "per_item"] = "all_or_nothing"


class BudgetCreate(Strict, kw_only=True):
    code: Code
    name: Annotated[str, Meta(max_length=200)] = ""
    cap: Annotated[int, Meta(ge=0, le=10**13, description="Points the budget may issue.")]
    unit_cost_micros: Annotated[
        int,
        Meta(ge=0, le=10**9, description="Money per point in millionths of the currency: 0.01 CNY = 10000."),
    ]
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    per_member_cap: Points | None = None
    alert_thresholds: Annotated[list[Annotated[int, Meta(ge=1, le=100)]], Meta(max_length=10)] = []
    shards: Annotated[int, Meta(ge=1, le=64, description="Balance rows that share the budget's load.")] = 16


class BudgetTopUp(Strict, kw_only=True):
    points: Points
    reason: Reason | None = None


class BudgetMove(Strict, kw_only=True):
    from_budget: Code
    to_budget: Code
    points: Points
    reason: Reason | None = None


class Balance(msgspec.Struct):
    available: int
    pending: int
    held: int
    expiring_soon: int = 0


class EarnResult(msgspec.Struct):
    transaction_id: int
    kind: str
    member_id: str
    budget: str
    amount: int
    requested: int
    status: Literal["available", "pending"]
    vests_at: datetime | None
    expires_at: datetime | None
    reference: str | None
    cost_micros: int
    balance: Balance


class SpendResult(msgspec.Struct):
    transaction_id: int
    kind: str
    member_id: str
    amount: int
    reference: str | None
    cost_micros: int
    balance: Balance


class HoldResult(msgspec.Struct):
    hold_id: int
    member_id: str
    amount: int
    captured: int
    status: Literal["open", "captured", "voided", "expired"]
    reference: str | None
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None
    balance: Balance
    transaction_id: int | None = None
    cost_micros: int | None = None


class ClawbackResult(msgspec.Struct):
    transaction_id: int
    kind: str
    member_id: str
    reference: str
    requested: int
    clawed_back: int
    from_earned_lots: int
    from_other_points: int
    debt: int
    written_off: int
    policy: str
    cost_micros: int
    balance: Balance


class BudgetView(msgspec.Struct):
    code: str
    name: str
    status: str
    cap: int
    remaining: int
    issued: int
    unit_cost_micros: int
    starts_at: datetime | None
    ends_at: datetime | None
    per_member_cap: int | None
    alert_thresholds: list[int]
    alerts_sent: list[int]
    created_at: datetime
    closed_at: datetime | None
    # Budgets have one unit cost, so the money issued is exact: issued x unit cost.
    issued_cost_micros: int


class AdjustResult(msgspec.Struct):
    transaction_id: int
    kind: str
    member_id: str
    amount: int
    reason: str
    expires_at: datetime | None
    cost_micros: int
    balance: Balance


class TransferResult(msgspec.Struct):
    """``balance`` is the sender's."""

    transaction_id: int
    kind: str
    from_member_id: str
    to_member_id: str
    amount: int
    cost_micros: int
    balance: Balance


class BudgetMoveResult(msgspec.Struct, rename={"from_": "from"}):
    transaction_id: int
    from_: BudgetView
    to: BudgetView


class HistoryItem(msgspec.Struct):
    id: int
    kind: str
    amount: int
    reference: str | None
    reason: str | None
    budget: str | None
    hold_id: int | None
    reverses_id: int | None
    cost_micros: int
    metadata: dict[str, Any]
    created_at: datetime
    member_id: str | None
    counterparty_id: str | None


class HistoryPage(msgspec.Struct):
    items: list[HistoryItem]
    next_cursor: str | None


class ExpiringItem(msgspec.Struct):
    expires_at: datetime
    points: int


class Expiring(msgspec.Struct):
    member_id: str
    days: int
    total: int
    items: list[ExpiringItem]


class LotView(msgspec.Struct):
    id: int
    txn_id: int
    budget: str | None
    amount: int
    remaining: int
    vested: bool
    vests_at: datetime | None
    expires_at: datetime | None
    created_at: datetime


class OpenHold(msgspec.Struct):
    hold_id: int
    amount: int
    reference: str | None
    expires_at: datetime
    created_at: datetime


class LiabilityLine(msgspec.Struct):
    budget: str | None
    unit_cost_micros: int | None
    available: int
    pending: int
    held: int
    liability_micros: int
    breakage_points: int
    breakage_micros: int


class LiabilityReport(msgspec.Struct):
    currency: str
    lines: list[LiabilityLine]
    outstanding_points: int
    liability_micros: int
    breakage_points: int
    breakage_micros: int


class BatchFailure(msgspec.Struct):
    index: int
    error: str
    detail: dict[str, Any] | None = None


class BatchEarnResult(msgspec.Struct):
    mode: str
    earned: int
    failed: int
    points: int
    # One entry per item, in item order: the earn's transaction id, or null where it failed.
    transaction_ids: list[int | None]
    failures: list[BatchFailure]
