"""The tier ladder in a real browser: edit a draft, backtest it, publish it, explain a member."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import Console

SPEND = {"a": 100, "b": 1500, "c": 6000, "d": 1200}


def _post(client: httpx.Client, path: str, body: dict[str, Any], expect_status: int) -> dict[str, Any]:
    r = client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == expect_status, f"{path}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def members_with_spend(console: Console) -> None:
    """Members enrolled and buying through the API, as the shop and the CRM would."""
    with console.api("crm") as crm, console.api("ecommerce") as shop:
        for member, spend in SPEND.items():
            _post(crm, "/v1/members", {"member_id": member}, 201)
            if spend:
                event = {
                    "event_id": f"order-{member}",
                    "member_id": member,
                    "type": "order_completed",
                    "order_ref": f"o-{member}",
                    "amount": spend,
                    "currency": "CNY",
                }
                _post(shop, "/v1/events", event, 201)


def test_edit_the_ladder_backtest_publish_and_explain(console: Console) -> None:
    members_with_spend(console)
    with console.api("operator") as api:
        first = {
            "note": "launch",
            "tiers": [
                {"code": "base", "name": "Member", "rank": 0},
                {
                    "code": "silver",
                    "name": "Silver",
                    "rank": 1,
                    "entry": {"fact": "spend", "op": ">=", "value": 1000},
                },
            ],
        }
        _post(api, "/v1/tiers/versions", first, 201)
        _post(api, "/v1/tiers/versions/1/publish", {}, 200)
        for member in ("b", "c", "d"):
            assert _post(api, f"/v1/members/{member}/tier/assess", {}, 200)["tier"] == "silver"

    page = console.page
    console.login("marketer")
    page.get_by_role("link", name="Tiers").click()
    expect(page.get_by_role("heading", name="Tier ladder")).to_be_visible()
    expect(page.locator("tr[data-version='1']")).to_contain_text("published")
    console.screenshot("tiers")

    page.get_by_role("button", name="New draft from the current ladder").click()
    expect(page.get_by_role("heading", name="Edit ladder draft 2")).to_be_visible()
    silver_spend = page.locator('[name="tiers[1].spend"]')
    expect(silver_spend).to_have_value("1000")
    silver_spend.fill("1300")  # d (1200) falls out of silver
    page.locator('[name="tiers[1].months"]').fill("12")
    page.locator('[name="tiers[1].grace_days"]').fill("30")
    page.locator('[name="tiers[2].code"]').fill("gold")
    page.locator('[name="tiers[2].name"]').fill("Gold")
    page.locator('[name="tiers[2].spend"]').fill("5000")  # c (6000) reaches gold
    page.locator('[name="tiers[2].downgrade_policy"]').select_option("to_qualified")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft saved.")
    expect(page.locator("tr[data-tier='gold']")).to_contain_text("spend >= 5000")

    page.get_by_role("link", name="Backtest").click()
    expect(page.get_by_role("heading", name="Backtest of version 2")).to_be_visible()
    expect(page.locator("[data-figure='members']")).to_have_text("4")
    expect(page.locator("[data-figure='up']")).to_have_text("1")
    expect(page.locator("[data-figure='down']")).to_have_text("1")
    movers = page.locator("table.movers tbody tr")
    expect(movers).to_have_count(2)
    expect(page.locator("tr[data-member='c']")).to_have_attribute("data-move", "up")
    expect(page.locator("tr[data-member='d']")).to_have_attribute("data-move", "down")
    console.screenshot("tier-backtest")
    page.get_by_role("link", name="Down (1)").click()
    expect(movers).to_have_count(1)
    expect(page.locator("tr[data-member='d']")).to_contain_text("silver")

    page.get_by_role("link", name="Publish…").click()
    expect(page.locator("[data-figure='up']")).to_have_text("1")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Publish version 2").click()
    expect(page.get_by_role("status")).to_contain_text("Published")
    with console.api("operator") as api:
        assert api.get("/v1/tiers/versions/2").json()["status"] == "published"

    # Publishing queued the re-assessment: the worker promotes c to gold.
    deadline = time.monotonic() + 20
    while True:
        console.goto("/console/tiers/explain?member_id=c")
        if page.locator("[data-figure='tier']").inner_text() == "gold" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expect(page.locator("[data-figure='tier']")).to_have_text("gold")
    expect(page.locator("ul.explain.keep li[data-fact='spend']")).to_contain_text("6000")
    expect(page.locator("table.tier-history")).to_contain_text("promoted")

    # Explaining starts from the ladder page; the base-tier member sees what silver takes.
    page.get_by_role("link", name="← Tier ladder").click()
    page.get_by_label("Member id").fill("a")
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("[data-figure='tier']")).to_have_text("base")
    expect(page.get_by_role("heading", name=re.compile("What silver takes"))).to_be_visible()
    expect(page.locator("ul.explain.progress li[data-fact='spend']")).to_contain_text("1200 more needed")


def test_an_analyst_sees_the_ladder_without_its_buttons(console: Console) -> None:
    with console.api("operator") as api:
        _post(api, "/v1/tiers/versions", {"tiers": [{"code": "base", "rank": 0}]}, 201)
    page = console.page
    console.login("analyst")
    console.goto("/console/tiers")
    expect(page.locator("tr[data-version='1']")).to_be_visible()
    expect(page.get_by_role("button", name="New draft from the current ladder")).to_have_count(0)
    expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    console.goto("/console/tiers/1/edit")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    # At phone width the pages fit the screen (wide tables scroll inside their box).
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/console/tiers", "/console/tiers/1", "/console/tiers/1/backtest", "/console/tiers/explain"):
        console.goto(path)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, path
