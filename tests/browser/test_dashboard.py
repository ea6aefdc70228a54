"""The dashboard in a real browser: earn through the API, roll the figures up, and watch the
charts' series and the tiles change; the period picker; the empty programme; the phone width."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from playwright.sync_api import expect

from loyalty.console.figures import money
from loyalty.db import create_engine
from loyalty.reports import service, tasks
from tests.browser.conftest import Console, run


def rolled_up(console: Console) -> None:
    """What the live server's worker does every 10 s, done now to keep the test fast."""

    async def work() -> None:
        engine = create_engine(console.server.settings.database_url or "", pool_size=1)
        try:
            await tasks.rollup(engine, margin_seconds=0)
            async with engine.begin() as conn:
                await service.refresh_forecast(conn)
        finally:
            await engine.dispose()

    run(work())


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A write through the API, with the Idempotency-Key every write carries."""
    r = client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code in (200, 201), f"POST {path}: {r.status_code} {r.text}"
    answer: dict[str, Any] = r.json()
    return answer


def named(series: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {s["name"]: s["data"] for s in series}


def x_axis(console: Console, chart_id: str) -> list[str]:
    console.chart_series(chart_id)  # waits until drawn
    days: list[str] = console.page.evaluate(
        f"() => window.loyaltyCharts[{chart_id!r}].getOption().xAxis[0].data"
    )
    return days


def test_earns_through_the_api_show_on_the_dashboard(console: Console) -> None:
    page = console.page
    console.login("analyst")
    # An empty programme: every chart drawn, with zeros, and a line saying why.
    expect(page.get_by_text("Nothing has happened in this programme yet")).to_be_visible()
    for chart_id in ("chart-flows", "chart-liability", "chart-forecast", "chart-stock", "chart-tiers",
                     "chart-tier-moves", "chart-members", "chart-budgets"):  # fmt: skip
        for s in console.chart_series(chart_id):
            assert all(v in (0, None) for v in s["data"]), (chart_id, s)

    with console.api("operator") as operator, console.api("ecommerce") as shop, console.api("crm") as crm:
        post(operator, "/v1/budgets", {"code": "base", "cap": 50_000, "unit_cost_micros": 10_000})
        for member, points in (("ann", 1_200), ("bob", 300)):
            post(crm, "/v1/members", {"member_id": member})
            post(
                shop,
                "/v1/earn",
                {"member_id": member, "budget": "base", "points": points, "expiry": {"days": 60}},
            )
        post(shop, "/v1/spend", {"member_id": "ann", "points": 200})
        rolled_up(console)
        liability = operator.get("/v1/reports/liability").json()
    assert liability["outstanding_points"] == 1_300

    page.reload()
    expect(page.get_by_text("Nothing has happened in this programme yet")).to_have_count(0)
    flows = named(console.chart_series("chart-flows"))
    assert flows["Issued"][-1] == 1_500 and sum(flows["Issued"]) == 1_500
    assert flows["Redeemed"][-1] == 200
    # The liability tile and the chart's last day: the API's figure, in yuan.
    tile = page.locator('[data-figure="liability"]')
    expect(tile).to_have_text(money(liability["liability_micros"], "CNY"))
    assert tile.get_attribute("data-micros") == str(liability["liability_micros"])
    assert named(console.chart_series("chart-liability"))["Liability (CNY)"][-1] == 13.0
    expect(page.locator('[data-figure="outstanding"]')).to_have_text("1,300")
    stock = named(console.chart_series("chart-stock"))
    assert stock["Available"][-1] == 1_300 and stock["Held"][-1] == 0
    assert sum(named(console.chart_series("chart-members"))["New"]) == 2
    assert sum(named(console.chart_series("chart-tiers"))["Members"]) == 2
    forecast = named(console.chart_series("chart-forecast"))
    assert sum(forecast["Due to expire (points)"]) == 1_300
    budgets = named(console.chart_series("chart-budgets"))
    assert budgets == {"Issued": [1_500], "Remaining": [48_500]}
    console.screenshot("dashboard")

    # The period picker: the last 7 days, then two given dates.
    assert len(x_axis(console, "chart-flows")) == 30
    page.get_by_label("Last").select_option("7")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"days=7"))
    assert len(x_axis(console, "chart-flows")) == 7
    assert len(x_axis(console, "chart-members")) == 7
    assert named(console.chart_series("chart-flows"))["Issued"][-1] == 1_500
    page.get_by_label("From", exact=True).fill("2026-02-01")
    page.get_by_label("To", exact=True).fill("2026-01-01")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#e-since")).to_have_text("must not be after until")
    assert len(x_axis(console, "chart-flows")) == 30  # the default period, drawn again


def test_the_dashboard_fits_a_phone(console: Console) -> None:
    page = console.page
    page.set_viewport_size({"width": 390, "height": 844})
    console.login("analyst")
    console.chart_series("chart-budgets")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    expect(page.locator("#chart-flows")).to_be_visible()
    console.goto("/console/budgets")
    expect(page.get_by_role("heading", name="Budgets")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
