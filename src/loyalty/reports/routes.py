"""Thin HTTP routes of the reports: the dashboard's figures as JSON, and the finance export."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ
from loyalty.ledger import schemas as ledger_schemas
from loyalty.ledger import service as ledger
from loyalty.programmes import repository as programmes
from loyalty.reports import schemas as s
from loyalty.reports import service

# Operators only: these figures are the programme's finances.
REPORT_ROLES = ("operator",)
REPORTS = allow(*REPORT_ROLES)

Since = Annotated[
    date | None,
    QueryParameter(description="First local day of the period (YYYY-MM-DD); default: 89 days before until."),
]
Until = Annotated[
    date | None,
    QueryParameter(description="Last local day of the period, included (YYYY-MM-DD); default: today. "
                   "A period spans at most three years."),
]  # fmt: skip


class DashboardController(Controller):
    path = "/v1/reports"
    tags = ["reports"]
    dependencies = READ
    guards = [REPORTS]

    @get("/liability")
    async def liability(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> ledger_schemas.LiabilityReport:
        """Outstanding points and their money value, and breakage to date, by budget."""
        programme = await programmes.by_id(tx, who.programme_id)
        return await ledger.liability(tx, who, programme["currency"])

    @get("/flows")
    async def flows(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since,
        until: Until,
    ) -> s.DailyFlows:
        """Points and money issued, redeemed, expired, clawed back and adjusted per day."""
        return await service.daily_flows(tx, who.programme_id, since, until)

    @get("/liability-series")
    async def liability_series(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since,
        until: Until,
    ) -> s.LiabilitySeries:
        """Outstanding points, their money value and the breakage rate at the end of each day."""
        return await service.liability_series(tx, who.programme_id, since, until)

    @get("/forecast")
    async def forecast(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.Forecast:
        """Points due to expire in each of the next 12 months and the breakage history predicts."""
        return await service.forecast(tx, who.programme_id)

    @get("/stock")
    async def stock(self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]) -> s.Stock:
        """The members' available, pending and held points now."""
        return await service.stock(tx, who.programme_id)

    @get("/stock-series")
    async def stock_series(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since,
        until: Until,
    ) -> s.StockSeries:
        """Available, pending and held points at the end of each day."""
        return await service.stock_series(tx, who.programme_id, since, until)

    @get("/members")
    async def members(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since,
        until: Until,
    ) -> s.MemberActivity:
        """New and active members per day, and members enrolled by the end of each day."""
        return await service.new_and_active_members(tx, who.programme_id, since, until)

    @get("/tiers")
    async def tiers(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.MembersByTier:
        """Members per tier now."""
        return await service.members_by_tier(tx, who.programme_id)

    @get("/tier-moves")
    async def tier_moves(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since,
        until: Until,
    ) -> s.TierMoves:
        """Tier changes per week: promotions, demotions and the rest, by pair of tiers."""
        return await service.tier_moves_per_week(tx, who.programme_id, since, until)

    @get("/budgets")
    async def budgets(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since,
        until: Until,
    ) -> s.BudgetBurns:
        """Each budget's issued points against its cap at the end of each day."""
        return await service.budget_burn(tx, who.programme_id, since, until)


class ExportController(Controller):
    path = "/v1/exports"
    tags = ["reports"]

    @get("/transactions.csv", dependencies=READ, guards=[REPORTS], media_type="text/csv")
    async def transactions(
        self,
        request: Request,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        since: Since,
        until: Until,
    ) -> Stream:
        """The period's transactions for finance, one CSV record per transaction, streamed.
        Money in micros, in minor units and formatted in the programme currency."""
        first, last = await service.export_period(tx, who.programme_id, since, until)
        filename = f"transactions-{first.isoformat()}-{last.isoformat()}.csv"
        return Stream(
            service.export_transactions(request.app.state.engine, who.programme_id, first, last),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


ROUTES = [DashboardController, ExportController]
