"""Pure ledger logic: no database, no HTTP. The posting itself happens in the SQL engine
(ledger/sql/); what is decided before it — dates, fingerprints, plausibility — lives here."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from loyalty.errors import InvalidInput
from loyalty.idempotency import fingerprint as fingerprint  # the ledger's callers use core.fingerprint

Rounding = Literal["none", "month", "quarter", "year"]

MAX_POINTS = 10**12  # a sanity bound per operation; far above any real programme's need


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """Points expire ``days`` after they are earned, optionally at the end of that period."""

    days: int | None = None
    round_to: Rounding = "none"

    def expires_at(self, earned_at: datetime, tz: str = "UTC") -> datetime | None:
        if self.days is None:
            return None
        local = earned_at.astimezone(ZoneInfo(tz))
        due = (local + timedelta(days=self.days)).date()
        if self.round_to != "none":
            due = period_end(due, self.round_to)
            # The whole last day counts: expire at the start of the next day, local time.
            return datetime.combine(due + timedelta(days=1), time.min, ZoneInfo(tz)).astimezone(UTC)
        return (local + timedelta(days=self.days)).astimezone(UTC)


def period_end(day: date, round_to: Rounding) -> date:
    if round_to == "month":
        return day.replace(day=calendar.monthrange(day.year, day.month)[1])
    if round_to == "quarter":
        last_month = ((day.month - 1) // 3 + 1) * 3
        return date(day.year, last_month, calendar.monthrange(day.year, last_month)[1])
    if round_to == "year":
        return date(day.year, 12, 31)
    return day


def vests_at(earned_at: datetime, pending_days: int | None) -> datetime | None:
    if not pending_days:
        return None
    return earned_at + timedelta(days=pending_days)


def check_points(field: str, value: int, *, allow_negative: bool = False, allow_zero: bool = False) -> int:
    if not allow_negative and value < 0:
        raise InvalidInput(field, "must not be negative")
    if not allow_zero and value == 0:
        raise InvalidInput(field, "must not be zero")
    if abs(value) > MAX_POINTS:
        raise InvalidInput(field, f"must be at most {MAX_POINTS}")
    return value
