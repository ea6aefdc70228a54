"""msgspec Structs the reports answer with: the JSON of /v1/reports/... and the values the
console reads. Money is in micros (millionths of the programme currency), as in the ledger."""

from __future__ import annotations

from datetime import date, datetime

import msgspec


class FlowFigures(msgspec.Struct):
    issued_points: int = 0
    issued_micros: int = 0
    redeemed_points: int = 0
    redeemed_micros: int = 0
    expired_points: int = 0
    expired_micros: int = 0
    clawed_back_points: int = 0
    clawed_back_micros: int = 0
    # Signed: operator credits minus debits.
    adjusted_points: int = 0
    adjusted_micros: int = 0


class FlowDay(FlowFigures):
    day: date = date.min


class DailyFlows(msgspec.Struct):
    currency: str
    since: date
    until: date
    # Every ledger row created before this instant is counted, and none after it.
    rolled_up_to: datetime | None
    days: list[FlowDay]
    totals: FlowFigures


class LiabilityDay(msgspec.Struct):
    day: date
    # At the end of the day: issued + adjusted - redeemed - expired - clawed back, to date.
    outstanding_points: int
    liability_micros: int
    # Expired / (expired + redeemed), in points, from the start of the programme to the day.
    breakage_rate: float | None


class LiabilitySeries(msgspec.Struct):
    currency: str
    since: date
    until: date
    rolled_up_to: datetime | None
    days: list[LiabilityDay]


class ForecastMonth(msgspec.Struct):
    month: date
    due_points: int
    due_micros: int
    predicted_breakage_points: int
    predicted_breakage_micros: int


class Forecast(msgspec.Struct):
    currency: str
    # The basis: points that expired and that were redeemed over the last 12 months.
    basis_since: date
    basis_until: date
    expired_points: int
    redeemed_points: int
    breakage_ratio: float | None
    computed_at: datetime | None
    months: list[ForecastMonth]
    due_points: int
    due_micros: int
    predicted_breakage_points: int
    predicted_breakage_micros: int


class Stock(msgspec.Struct):
    rolled_up_to: datetime | None
    # Sums of the members' buckets (available is net of any debt under the 'negative' policy).
    available: int
    pending: int
    held: int
    outstanding: int


class StockDay(msgspec.Struct):
    day: date
    available: int
    pending: int
    held: int


class StockSeries(msgspec.Struct):
    since: date
    until: date
    rolled_up_to: datetime | None
    days: list[StockDay]


class TierCount(msgspec.Struct):
    tier: str
    members: int


class MembersByTier(msgspec.Struct):
    tiers: list[TierCount]
    # Members the ladder has not placed (never assessed, or no ladder).
    untiered: int
    total_members: int


class TierMove(msgspec.Struct):
    kind: str
    from_tier: str | None
    to_tier: str | None
    moves: int


class TierWeek(msgspec.Struct):
    week: date  # the Monday
    promoted: int
    demoted: int
    other: int
    moves: list[TierMove]


class TierMoves(msgspec.Struct):
    since: date
    until: date
    weeks: list[TierWeek]


class MemberDay(msgspec.Struct):
    day: date
    new_members: int
    active_members: int
    # Enrolled by the end of the day.
    total_members: int


class MemberActivity(msgspec.Struct):
    since: date
    until: date
    rolled_up_to: datetime | None
    days: list[MemberDay]


class BudgetBurn(msgspec.Struct):
    code: str
    name: str
    status: str
    unit_cost_micros: int
    # Now, as rolled up (the budget's own figures once the job has caught up).
    cap: int
    issued: int
    remaining: int
    issued_micros: int
    # At the end of each day of BudgetBurns.days, in the same order (chart-ready columns).
    issued_series: list[int]
    cap_series: list[int]


class BudgetBurns(msgspec.Struct):
    currency: str
    since: date
    until: date
    rolled_up_to: datetime | None
    days: list[date]
    budgets: list[BudgetBurn]


class RollupResult(msgspec.Struct):
    transactions: int
    deltas: int
    rolled_up_to: datetime | None
