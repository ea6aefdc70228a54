"""Earning rules in a real browser: create a draft, simulate an event against it, activate it and
earn by it through the API; replay a draft rule set over events recorded through the API, with
the progress reaching 100% and the chart drawn from the replay's own result."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Console


def _ok(r: Any, status: int = 201) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _post(client: Any, path: str, body: Any = None, status: int = 201) -> Any:
    """A write through the API, with the Idempotency-Key the API asks of every write."""
    return _ok(client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex}), status)


def test_create_simulate_activate_and_earn(console: Console) -> None:
    page = console.page
    with console.api() as api, console.api("crm") as crm:
        _post(api, "/v1/budgets", {"code": "base", "cap": 1_000_000, "unit_cost_micros": 10_000})
        _post(crm, "/v1/members", {"member_id": "m1"})
    console.login("marketer")
    console.goto("/console/rules")
    expect(page.get_by_text("No rule is active")).to_be_visible()
    page.get_by_role("link", name="New rule").click()
    page.get_by_label("Code", exact=True).fill("spend")
    page.get_by_label("Name", exact=True).fill("Spend and earn")
    page.get_by_label("Points", exact=True).fill("2")
    page.get_by_label("Per amount (minor units, per_unit only)").fill("0")
    page.get_by_role("button", name="Create draft").click()
    # A refusal sits next to its field, and the form keeps what was typed.
    expect(page.locator("#e-formula\\.per")).to_contain_text("must be a positive integer")
    expect(page.get_by_label("Code", exact=True)).to_have_value("spend")
    page.get_by_label("Per amount (minor units, per_unit only)").fill("100")
    page.get_by_role("button", name="Create draft").click()
    expect(page).to_have_url(re.compile(r"/console/rules/spend$"))
    expect(page.locator("[data-status=draft]")).to_be_visible()

    # Simulate against the draft: 12.34 spent at 2 points per 1.00 = 24 points, 0.24 of money.
    page.get_by_label("Member id").fill("m1")
    page.get_by_label("Amount (minor units)").fill("1234")
    page.get_by_role("button", name="Simulate").click()
    expect(page.locator("[data-figure=sim-points]")).to_have_text("24")
    expect(page.locator("[data-figure=sim-cost]")).to_have_text("0.24")
    expect(page.locator("[data-figure=sim-fired]")).to_have_text("spend")
    expect(page.locator("tr[data-outcome=spend]")).to_contain_text("this rule")
    console.screenshot("rules")
    with console.api() as api:
        assert _ok(api.get("/v1/members/m1/balance"), 200)["available"] == 0  # nothing written

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Activate").click()
    expect(page.locator("[data-status=active]")).to_be_visible()
    with console.api("ecommerce") as shop, console.api() as api:
        event = {"event_id": "e1", "member_id": "m1", "type": "order_completed", "order_ref": "o1",
                 "amount": 1000, "currency": "CNY"}  # fmt: skip
        answer = _post(shop, "/v1/events", event)
        assert answer["points"] == 20 and [r["code"] for r in answer["rules"] if r["points"]] == ["spend"]
        assert _ok(api.get("/v1/members/m1/balance"), 200)["available"] == 20
    console.goto("/console/rules")
    expect(page.locator("tr[data-rule=spend]")).to_contain_text("active")


def test_replay_a_draft_over_recorded_events(console: Console) -> None:
    page = console.page
    when = datetime.now(UTC) - timedelta(days=3)
    spend = {"code": "spend", "event_type": "order_completed", "budget": "base",
             "formula": {"kind": "per_unit", "points": 1, "per": 100}}  # fmt: skip
    double = {**spend, "code": "double", "formula": {"kind": "per_unit", "points": 2, "per": 100}}
    with console.api() as api, console.api("crm") as crm, console.api("ecommerce") as shop:
        _post(api, "/v1/budgets", {"code": "base", "cap": 10_000_000, "unit_cost_micros": 10_000})
        _post(api, "/v1/earning-rules", spend)
        _post(api, "/v1/earning-rules", double)
        _post(api, "/v1/earning-rules/double/deactivate", status=200)
        for member in ("m1", "m2"):
            _post(crm, "/v1/members", {"member_id": member})
        for i, (member, amount, days) in enumerate((("m1", 1000, 0), ("m2", 500, 0), ("m1", 300, 1))):
            event = {"event_id": f"e{i}", "member_id": member, "type": "order_completed", "order_ref": f"o{i}",
                     "amount": amount, "currency": "CNY", "occurred_at": (when + timedelta(days=days)).isoformat()}  # fmt: skip
            _post(shop, "/v1/events", event)
    console.login("marketer")
    console.goto("/console/rules")
    page.get_by_role("link", name="Replay a draft rule set").click()
    # The draft: "double" in place of "spend", over the last 90 days.
    page.get_by_label("spend").uncheck()
    expect(page.get_by_label("double")).to_be_checked()
    page.get_by_role("button", name="Start the replay").click()
    expect(page).to_have_url(re.compile(r"/console/replay/rules-replay"))
    bar = page.get_by_role("progressbar", name="Replay progress")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=30_000)
    expect(page.locator("[data-status=succeeded]")).to_be_visible()
    expect(page.locator("[data-figure=draft-points]")).to_have_text("36")
    expect(page.locator("[data-figure=actual-points]")).to_have_text("18")
    job_id = page.locator("[data-job]").get_attribute("data-job")
    with console.api() as api:
        result = _ok(api.get(f"/v1/earning-rules/replay/{job_id}"), 200)["result"]
    series = {s["name"]: s["data"] for s in console.chart_series("chart-replay-points")}
    assert series == {
        "Draft": [d["draft_points"] for d in result["days"]],
        "In force": [d["actual_points"] for d in result["days"]],
    }
    assert series["Draft"] == [30, 6] and series["In force"] == [15, 3]
    money = {s["name"]: s["data"] for s in console.chart_series("chart-replay-cost")}
    assert money["Draft"] == [d["draft_micros"] / 1_000_000 for d in result["days"]] == [0.3, 0.06]
    gainers = page.locator("table[data-list=gainers] tbody tr")
    expect(gainers.first).to_contain_text("m1")
    expect(gainers.first).to_contain_text("+13")
    expect(page.locator("tr[data-rule=spend]")).to_contain_text("removed")
    console.screenshot("replay")
