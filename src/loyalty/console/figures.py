"""Figures for people: money in the programme's currency, and the ECharts options of the
dashboard and budget charts. Pure functions of the report values; no I/O.

Money stays in integer micros everywhere else. A chart's axis needs numbers, so its series
carry the amount in the currency's units (to its minor unit, e.g. 12.34), converted from the
exact formatted amount; tiles show the formatted string itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from loyalty.errors import InvalidInput
from loyalty.reports import core as report_core
from loyalty.reports import schemas as rs


def money(micros: int, currency: str) -> str:
    """'1,234.57 CNY': the amount rounded to the currency's minor unit, with separators."""
    places = report_core.exponent(currency)
    value = Decimal(report_core.format_money(micros, currency))
    return f"{value:,.{places}f} {currency}"


def money_number(micros: int, currency: str) -> float:
    """The amount in currency units, for a chart axis (exact to the minor unit)."""
    return float(report_core.format_money(micros, currency))


def unit_cost(micros: int, currency: str) -> str:
    """A cost per point: micros may be finer than the minor unit (0.0025 CNY), so all six
    decimals are kept, less trailing zeros (but never fewer than the currency's own)."""
    places = report_core.exponent(currency)
    text = f"{Decimal(micros).scaleb(-6):.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    fraction = fraction.ljust(places, "0")
    return f"{whole}.{fraction} {currency}" if fraction else f"{whole} {currency}"


def percent(part: int, whole: int) -> float | None:
    """part / whole in percent, one decimal (None when whole is 0)."""
    if whole <= 0:
        return None
    return round(100 * part / whole, 1)


def _days(days: Sequence[date]) -> list[str]:
    return [d.isoformat() for d in days]


def _base(x: list[str], y: Any, *, legend: bool = True) -> dict[str, Any]:
    option: dict[str, Any] = {
        "animation": False,
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 12, "right": 12, "top": 48 if legend else 16, "bottom": 8, "containLabel": True},
        "xAxis": {"type": "category", "data": x},
        "yAxis": y,
    }
    if legend:
        option["legend"] = {"top": 0, "type": "scroll"}
    return option


def flows_option(flows: rs.DailyFlows) -> dict[str, Any]:
    """Points issued, redeemed, expired and clawed back per day."""
    option = _base(_days([d.day for d in flows.days]), {"type": "value", "name": "points"})
    option["series"] = [
        {"name": name, "type": "bar", "data": [getattr(d, field) for d in flows.days]}
        for name, field in (
            ("Issued", "issued_points"),
            ("Redeemed", "redeemed_points"),
            ("Expired", "expired_points"),
            ("Clawed back", "clawed_back_points"),
        )
    ]
    return option


def liability_option(series: rs.LiabilitySeries) -> dict[str, Any]:
    """Outstanding liability in money (left axis) and the breakage rate in percent (right)."""
    currency = series.currency
    option = _base(
        _days([d.day for d in series.days]),
        [
            {"type": "value", "name": currency},
            {"type": "value", "name": "%", "min": 0, "max": 100, "splitLine": {"show": False}},
        ],
    )
    option["series"] = [
        {
            "name": f"Liability ({currency})",
            "type": "line",
            "showSymbol": False,
            "areaStyle": {"opacity": 0.15},
            "data": [money_number(d.liability_micros, currency) for d in series.days],
        },
        {
            "name": "Breakage rate (%)",
            "type": "line",
            "yAxisIndex": 1,
            "showSymbol": False,
            "data": [
                None if d.breakage_rate is None else round(100 * d.breakage_rate, 2) for d in series.days
            ],
        },
    ]
    return option


def forecast_option(forecast: rs.Forecast) -> dict[str, Any]:
    """The next 12 months: money due to expire and the breakage predicted, and due points."""
    currency = forecast.currency
    option = _base(
        [m.month.strftime("%Y-%m") for m in forecast.months],
        [
            {"type": "value", "name": currency},
            {"type": "value", "name": "points", "splitLine": {"show": False}},
        ],
    )
    option["series"] = [
        {
            "name": f"Due to expire ({currency})",
            "type": "bar",
            "data": [money_number(m.due_micros, currency) for m in forecast.months],
        },
        {
            "name": f"Predicted breakage ({currency})",
            "type": "bar",
            "data": [money_number(m.predicted_breakage_micros, currency) for m in forecast.months],
        },
        {
            "name": "Due to expire (points)",
            "type": "line",
            "yAxisIndex": 1,
            "data": [m.due_points for m in forecast.months],
        },
    ]
    return option


def stock_option(stock: rs.StockSeries) -> dict[str, Any]:
    """Available, pending and held points at the end of each day, stacked."""
    option = _base(_days([d.day for d in stock.days]), {"type": "value", "name": "points"})
    option["series"] = [
        {
            "name": name,
            "type": "line",
            "stack": "stock",
            "showSymbol": False,
            "areaStyle": {},
            "data": [getattr(d, field) for d in stock.days],
        }
        for name, field in (("Available", "available"), ("Pending", "pending"), ("Held", "held"))
    ]
    return option


def tiers_option(tiers: rs.MembersByTier) -> dict[str, Any]:
    """Members per tier now (and the untiered), lowest tier first."""
    names = [t.tier for t in tiers.tiers]
    counts = [t.members for t in tiers.tiers]
    if tiers.untiered or not names:
        names.append("untiered")
        counts.append(tiers.untiered)
    option = _base(names, {"type": "value", "name": "members", "minInterval": 1}, legend=False)
    option["series"] = [{"name": "Members", "type": "bar", "data": counts}]
    return option


def tier_moves_option(moves: rs.TierMoves) -> dict[str, Any]:
    """Tier changes per week, by kind, stacked."""
    option = _base(_days([w.week for w in moves.weeks]), {"type": "value", "name": "moves", "minInterval": 1})
    option["series"] = [
        {"name": name, "type": "bar", "stack": "moves", "data": [getattr(w, field) for w in moves.weeks]}
        for name, field in (("Promoted", "promoted"), ("Demoted", "demoted"), ("Other", "other"))
    ]
    return option


def members_option(activity: rs.MemberActivity) -> dict[str, Any]:
    """New and active members per day (left axis), members enrolled (right)."""
    option = _base(
        _days([d.day for d in activity.days]),
        [
            {"type": "value", "name": "per day", "minInterval": 1},
            {"type": "value", "name": "enrolled", "minInterval": 1, "splitLine": {"show": False}},
        ],
    )
    option["series"] = [
        {"name": "New", "type": "bar", "data": [d.new_members for d in activity.days]},
        {
            "name": "Active",
            "type": "line",
            "showSymbol": False,
            "data": [d.active_members for d in activity.days],
        },
        {
            "name": "Enrolled",
            "type": "line",
            "yAxisIndex": 1,
            "showSymbol": False,
            "data": [d.total_members for d in activity.days],
        },
    ]
    return option


def budgets_option(burns: Sequence[rs.BudgetBurn]) -> dict[str, Any]:
    """Each budget's issued and remaining points now: the bar's length is its cap."""
    codes = [b.code for b in burns] or ["(no budgets)"]
    option: dict[str, Any] = {
        "animation": False,
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "legend": {"top": 0},
        "grid": {"left": 12, "right": 24, "top": 40, "bottom": 8, "containLabel": True},
        "xAxis": {"type": "value", "name": "points"},
        "yAxis": {"type": "category", "data": codes, "inverse": True},
        "series": [
            {"name": "Issued", "type": "bar", "stack": "cap", "data": [b.issued for b in burns] or [0]},
            {
                "name": "Remaining",
                "type": "bar",
                "stack": "cap",
                "data": [max(b.remaining, 0) for b in burns] or [0],
            },
        ],
    }
    return option


def burn_option(days: Sequence[date], burn: rs.BudgetBurn) -> dict[str, Any]:
    """One budget over the period: points issued to date at the end of each day, against its
    cap (which top-ups, moves and the close change), and what remained."""
    option = _base(_days(days), {"type": "value", "name": "points"})
    option["series"] = [
        {"name": "Issued", "type": "line", "showSymbol": False, "areaStyle": {"opacity": 0.2},
         "data": list(burn.issued_series)},
        {"name": "Cap", "type": "line", "step": "end", "showSymbol": False, "data": list(burn.cap_series)},
        {"name": "Remaining", "type": "line", "showSymbol": False, "lineStyle": {"type": "dashed"},
         "data": [c - i for c, i in zip(burn.cap_series, burn.issued_series, strict=True)]},
    ]  # fmt: skip
    return option


# The period picker ---------------------------------------------------------------------

PERIOD_CHOICES = (7, 30, 90)
DEFAULT_DAYS = 30


def chosen_period(values: Mapping[str, str], today: date) -> tuple[date, date, int | None]:
    """The days a page covers: ``since``/``until`` (local dates, either may be left out), or
    else the last ``days`` (7, 30 or 90; 30 by default) up to today. Returns (since, until,
    the preset chosen or None). A bad value is an InvalidInput naming its field."""
    since = _date(values, "since")
    until = _date(values, "until")
    if since is None and until is None:
        raw = (values.get("days") or str(DEFAULT_DAYS)).strip()
        if not raw.isdigit() or int(raw) not in PERIOD_CHOICES:
            raise InvalidInput("days", "choose 7, 30 or 90 days, or give the dates")
        days = int(raw)
        return today - timedelta(days=days - 1), today, days
    until = until or today
    since = since or until - timedelta(days=DEFAULT_DAYS - 1)
    first, last = report_core.period(since, until, today)
    return first, last, None


def _date(values: Mapping[str, str], field: str) -> date | None:
    raw = (values.get(field) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(field, "must be a date (YYYY-MM-DD)") from None
