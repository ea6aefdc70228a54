"""The dashboard over HTTP: its figures agree with GET /v1/reports/liability, the report API and
`ledger verify` after a realistic mix; the period picker; an empty programme."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.console.figures import money
from loyalty.ledger.verify import verify
from loyalty.reports.core import format_money
from tests.api.helpers import Api
from tests.api.test_reports import post_mix, rolled_up
from tests.console.helpers import chart_option, login, make_operator
from tests.support import make_programme


def chart(page: str, chart_id: str) -> dict[str, Any]:
    return chart_option(page, chart_id)


def series(page: str, chart_id: str) -> dict[str, list[Any]]:
    return {s["name"]: s["data"] for s in chart(page, chart_id)["series"]}


def figure(page: str, name: str) -> tuple[str, dict[str, str]]:
    """A tile's text and its data- attributes."""
    found = re.search(rf'<[^>]*data-figure="{name}"([^>]*)>([^<]*)<', page)
    assert found, f"no figure {name}"
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', found.group(1)))
    return html.unescape(found.group(2)).strip(), attrs


async def test_the_dashboard_agrees_with_the_liability_report_and_the_ledger(
    console_client: AsyncTestClient[Any], engine: AsyncEngine
) -> None:
    programme = await make_programme(engine, clawback_policy="clamp", timezone="Asia/Shanghai")
    # One client (one app) for the API and the console: the API calls carry their key.
    api = Api(console_client, programme)
    await post_mix(api, engine)
    await rolled_up(engine)
    liability = (await api.get("/v1/reports/liability")).json()
    async with engine.connect() as conn:
        assert await verify(conn, programme.id) == []

    await login(console_client, await make_operator(engine, programme.code, "analyst"))
    page = (await console_client.get("/console")).text

    text, attrs = figure(page, "liability")
    assert int(attrs["micros"]) == liability["liability_micros"] > 0
    assert text == money(liability["liability_micros"], "CNY")
    assert int(figure(page, "outstanding")[1]["points"]) == liability["outstanding_points"] > 0
    # The chart's last day is the same figure, in yuan.
    days = chart(page, "chart-liability")["xAxis"]["data"]
    assert len(days) == 30
    liability_line = series(page, "chart-liability")["Liability (CNY)"]
    assert liability_line[-1] == float(format_money(liability["liability_micros"], "CNY"))

    # Flows, stock, budgets: the report API's figures for the same period.
    since = days[0]
    flows = (await api.get("/v1/reports/flows", params={"since": since})).json()
    drawn = series(page, "chart-flows")
    assert drawn["Issued"] == [d["issued_points"] for d in flows["days"]]
    assert drawn["Redeemed"] == [d["redeemed_points"] for d in flows["days"]]
    assert drawn["Expired"] == [d["expired_points"] for d in flows["days"]]
    assert drawn["Clawed back"] == [d["clawed_back_points"] for d in flows["days"]]
    assert sum(drawn["Expired"]) == liability["breakage_points"] > 0
    assert int(figure(page, "issued")[1]["points"]) == flows["totals"]["issued_points"]

    stock = (await api.get("/v1/reports/stock")).json()
    drawn = series(page, "chart-stock")
    assert [drawn["Available"][-1], drawn["Pending"][-1], drawn["Held"][-1]] == [
        stock["available"], stock["pending"], stock["held"]
    ]  # fmt: skip
    assert figure(page, "stock-held")[0] == "70"

    budgets = {b["code"]: b for b in (await api.get("/v1/budgets")).json()}
    drawn = series(page, "chart-budgets")
    codes = chart(page, "chart-budgets")["yAxis"]["data"]
    assert sorted(codes) == sorted(budgets)
    for code, issued, remaining in zip(codes, drawn["Issued"], drawn["Remaining"], strict=True):
        assert issued == budgets[code]["issued"]
        assert issued + remaining == budgets[code]["cap"]

    members = series(page, "chart-members")
    assert members["Enrolled"][-1] == 6 and sum(members["New"]) == 6
    tiers = series(page, "chart-tiers")["Members"]
    assert sum(tiers) == 6

    forecast = (await api.get("/v1/reports/forecast")).json()
    drawn = series(page, "chart-forecast")
    assert drawn["Due to expire (points)"] == [m["due_points"] for m in forecast["months"]]
    assert int(figure(page, "forecast-due")[1]["micros"]) == forecast["due_micros"] > 0


async def test_the_period_picker(console_client: AsyncTestClient[Any], engine: AsyncEngine) -> None:
    programme = await make_programme(engine)
    await login(console_client, await make_operator(engine, programme.code, "analyst"))
    week = (await console_client.get("/console", params={"days": "7"})).text
    assert len(chart(week, "chart-flows")["xAxis"]["data"]) == 7
    quarter = (await console_client.get("/console", params={"days": "90"})).text
    assert len(chart(quarter, "chart-members")["xAxis"]["data"]) == 90
    dates = (await console_client.get("/console", params={"since": "2026-01-01", "until": "2026-01-10"})).text
    assert chart(dates, "chart-stock")["xAxis"]["data"][0] == "2026-01-01"
    assert len(chart(dates, "chart-stock")["xAxis"]["data"]) == 10

    # Refused periods: the message sits next to its field, and the default period is shown.
    bad = await console_client.get("/console", params={"since": "2026-02-01", "until": "2026-01-01"})
    assert bad.status_code == 400
    assert re.search(r'id="e-since">must not be after until<', bad.text)
    assert len(chart(bad.text, "chart-flows")["xAxis"]["data"]) == 30
    bad = await console_client.get("/console", params={"since": "2020-01-01", "until": "2026-01-01"})
    assert bad.status_code == 400 and 'id="e-until"' in bad.text
    bad = await console_client.get("/console", params={"days": "12"})
    assert bad.status_code == 400 and 'id="e-days"' in bad.text
    bad = await console_client.get("/console", params={"until": "yesterday"})
    assert bad.status_code == 400 and re.search(r'id="e-until">must be a date', bad.text)


async def test_an_empty_programme_draws_zeros_and_says_so(
    console_client: AsyncTestClient[Any], engine: AsyncEngine
) -> None:
    programme = await make_programme(engine)
    await login(console_client, await make_operator(engine, programme.code, "analyst"))
    r = await console_client.get("/console")
    assert r.status_code == 200
    assert "Nothing has happened in this programme yet" in r.text
    assert figure(r.text, "liability")[0] == "0.00 CNY"
    for chart_id in ("chart-flows", "chart-liability", "chart-forecast", "chart-stock", "chart-tiers",
                     "chart-tier-moves", "chart-members", "chart-budgets"):  # fmt: skip
        drawn = series(r.text, chart_id)
        assert drawn, chart_id
        for name, data in drawn.items():
            assert data and all(v in (0, None) for v in data), (chart_id, name, data)
    today = date.fromisoformat(chart(r.text, "chart-flows")["xAxis"]["data"][-1])
    assert abs(today - date.today()) <= timedelta(days=1)
