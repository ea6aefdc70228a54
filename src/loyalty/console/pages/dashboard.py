"""The dashboard: the programme's flows, liability, stock, members and budgets over a period."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Template

from loyalty.console.web import NavEntry, current, reading, render
from loyalty.reports import service as reports


@get("", name="console-dashboard")
async def dashboard(request: Request[Any, Any, Any]) -> Template:
    session = current(request)
    async with reading(request) as conn:
        flows = await reports.daily_flows(conn, session.programme_id)
    option = {
        "tooltip": {"trigger": "axis"},
        "legend": {},
        "xAxis": {"type": "category", "data": [d.day.isoformat() for d in flows.days]},
        "yAxis": {"type": "value"},
        "series": [
            {"name": "Issued", "type": "bar", "data": [d.issued_points for d in flows.days]},
            {"name": "Redeemed", "type": "bar", "data": [d.redeemed_points for d in flows.days]},
        ],
    }
    return render(request, "dashboard.html", flows=flows, flows_option=option)


ROUTES = [dashboard]
NAV = [NavEntry("Dashboard", "/console", order=0)]
