"""Pure report logic: periods, money in minor units, series and the breakage forecast.
No database, no HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from loyalty.errors import InvalidInput

# A dashboard period may span three years (and a day for a leap year) at most.
MAX_PERIOD_DAYS = 3 * 365 + 1
DEFAULT_PERIOD_DAYS = 90
FORECAST_MONTHS = 12
# Currencies whose minor unit is not the cent (ISO 4217); every other has two decimals.
_EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip
MICROS = 1_000_000


def period(since: date | None, until: date | None, today: date) -> tuple[date, date]:
    """The inclusive days a report covers: by default the 90 days up to today."""
    until = until or today
    since = since or until - timedelta(days=DEFAULT_PERIOD_DAYS - 1)
    if since > until:
        raise InvalidInput("since", "must not be after until")
    if (until - since).days + 1 > MAX_PERIOD_DAYS:
        raise InvalidInput("until", f"the period may span at most {MAX_PERIOD_DAYS} days (three years)")
    return since, until


def days(since: date, until: date) -> Iterator[date]:
    day = since
    while day <= until:
        yield day
        day += timedelta(days=1)


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def minor_units(micros: int, currency: str) -> int:
    """Millionths of the currency to its minor unit (cents, yen ...), half away from zero."""
    scaled = Decimal(micros) / Decimal(10 ** (6 - exponent(currency)))
    return int(scaled.to_integral_value(rounding=ROUND_HALF_UP))


def format_money(micros: int, currency: str) -> str:
    """'1234.57': the amount in the currency's own decimals, for people and spreadsheets."""
    places = exponent(currency)
    value = Decimal(minor_units(micros, currency)).scaleb(-places)
    return f"{value:.{places}f}"


def ratio_share(amount: int, part: int, whole: int) -> int:
    """amount × part / whole in integers, rounded half up (0 when whole is 0)."""
    if whole <= 0:
        return 0
    return (2 * amount * part + whole) // (2 * whole)


def breakage_rate(expired: int, redeemed: int) -> float | None:
    """Share of the points that left members' balances by expiring rather than by being spent."""
    total = expired + redeemed
    return None if total <= 0 else expired / total


def local_bounds(since: date, until: date, timezone: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the local days since..until of a programme's time zone."""
    tz = ZoneInfo(timezone)
    start = datetime.combine(since, time.min, tz).astimezone(UTC)
    end = datetime.combine(until + timedelta(days=1), time.min, tz).astimezone(UTC)
    return start, end


CSV_COLUMNS = (
    "transaction_id",
    "created_at",
    "local_date",
    "kind",
    "member_id",
    "counterparty_id",
    "budget",
    "reference",
    "reason",
    "points",
    "cost_micros",
    "cost_minor",
    "cost",
    "currency",
    "actor",
    "hold_id",
    "reverses_id",
)


def csv_fields(row: Any, currency: str, tz: ZoneInfo) -> list[object]:
    """One transaction as a CSV record (see docs/reports.md for the columns)."""
    created: datetime = row.created_at
    return [
        row.id,
        created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        created.astimezone(tz).date().isoformat(),
        row.kind,
        row.member or "",
        row.counterparty or "",
        row.budget or "",
        row.reference or "",
        row.reason or "",
        row.amount,
        row.cost_micros,
        minor_units(row.cost_micros, currency),
        format_money(row.cost_micros, currency),
        currency,
        row.actor or "",
        row.hold_id if row.hold_id is not None else "",
        row.reverses_id if row.reverses_id is not None else "",
    ]
