"""The dashboard: the programme's flows, liability, forecast, stock, members, tiers and budgets
over a period the operator picks.

Every figure comes from the report service (loyalty.reports.service), which reads the rollups
the worker keeps up to date, never the ledger's entries: the page costs the same at a thousand
members as at a million. All reads share one REPEATABLE READ snapshot, so the tiles and the
charts agree with each other; after the rollup has caught up they agree with
GET /v1/reports/liability and `loyalty ledger verify` (tests/console/test_dashboard.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from litestar import Request, get
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.console import figures
from loyalty.console.web import NavEntry, current, errors_of, reading, render
from loyalty.errors import InvalidInput
from loyalty.reports import schemas as rs
from loyalty.reports import service as reports

# The dashboard shows this many budgets (most issued first); the Budgets screen lists them all.
DASHBOARD_BUDGETS = 20


@dataclass(frozen=True, slots=True)
class Figures:
    flows: rs.DailyFlows
    liability: rs.LiabilitySeries
    liability_now: rs.LiabilityDay
    forecast: rs.Forecast
    stock: rs.Stock
    stock_series: rs.StockSeries
    tiers: rs.MembersByTier
    tier_moves: rs.TierMoves
    members: rs.MemberActivity
    budgets: rs.BudgetBurns


def local_today(timezone: str) -> date:
    return datetime.now(ZoneInfo(timezone)).date()


async def read_figures(
    conn: AsyncConnection, programme_id: int, since: date, until: date, today: date
) -> Figures:
    """Every figure of the dashboard, in the caller's (one) snapshot."""
    now = await reports.liability_series(conn, programme_id, today, today)
    return Figures(
        flows=await reports.daily_flows(conn, programme_id, since, until),
        liability=await reports.liability_series(conn, programme_id, since, until),
        liability_now=now.days[-1],
        forecast=await reports.forecast(conn, programme_id),
        stock=await reports.stock(conn, programme_id),
        stock_series=await reports.stock_series(conn, programme_id, since, until),
        tiers=await reports.members_by_tier(conn, programme_id),
        tier_moves=await reports.tier_moves_per_week(conn, programme_id, since, until),
        members=await reports.new_and_active_members(conn, programme_id, since, until),
        # Each budget's issued and cap now: the dashboard draws no daily series of them (the
        # Budgets screen does, per budget), so one day is read, not a year for every budget.
        budgets=await reports.budget_burn(conn, programme_id, today, today),
    )


@get("", name="console-dashboard")
async def dashboard(request: Request[Any, Any, Any]) -> Template:
    session = current(request)
    today = local_today(session.timezone)
    form = {k: request.query_params.get(k, "") for k in ("days", "since", "until")}
    errors: dict[str, str] = {}
    try:
        since, until, preset = figures.chosen_period(form, today)
    except InvalidInput as exc:
        errors = errors_of(exc)
        since, until, preset = figures.chosen_period({}, today)
    async with reading(request) as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            found = await read_figures(conn, session.programme_id, since, until, today)
    currency = found.flows.currency
    shown = sorted(found.budgets.budgets, key=lambda b: (-b.issued, b.code))[:DASHBOARD_BUDGETS]
    moved = any(
        getattr(found.flows.totals, f) for f in ("issued_points", "redeemed_points", "expired_points",
                                                 "clawed_back_points", "adjusted_points")
    )  # fmt: skip
    return render(
        request,
        "dashboard.html",
        status_code=400 if errors else 200,
        errors=errors,
        form=form,
        preset=preset,
        choices=figures.PERIOD_CHOICES,
        since=since,
        until=until,
        today=today,
        f=found,
        currency=currency,
        money=lambda micros: figures.money(micros, currency),
        percent=figures.percent,
        empty=not moved and found.liability_now.outstanding_points == 0 and found.tiers.total_members == 0,
        budgets=shown,
        budgets_hidden=len(found.budgets.budgets) - len(shown),
        options={
            "chart-flows": figures.flows_option(found.flows),
            "chart-liability": figures.liability_option(found.liability),
            "chart-forecast": figures.forecast_option(found.forecast),
            "chart-stock": figures.stock_option(found.stock_series),
            "chart-tiers": figures.tiers_option(found.tiers),
            "chart-tier-moves": figures.tier_moves_option(found.tier_moves),
            "chart-members": figures.members_option(found.members),
            "chart-budgets": figures.budgets_option(shown),
        },
    )


ROUTES = [dashboard]
NAV = [NavEntry("Dashboard", "/console", order=0)]
