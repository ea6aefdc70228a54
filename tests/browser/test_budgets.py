"""The Budgets screen in a real browser: create, top up (and a refused one), move, close; the
burn chart follows earns made through the API; an analyst gets no write buttons, and a forged
POST from their session is refused by the server."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import Console
from tests.browser.test_dashboard import named, post, rolled_up


def test_create_earn_top_up_move_and_close(console: Console) -> None:
    page = console.page
    console.login("marketer")
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Budgets").click()
    expect(page.get_by_text("No budgets yet.")).to_be_visible()

    page.get_by_text("New budget").click()
    page.get_by_label("Code", exact=True).fill("spring")
    page.get_by_label("Name", exact=True).fill("Spring sale")
    page.get_by_label("Cap (points)", exact=True).fill("10000")
    page.get_by_label("Cost per point (CNY)").fill("0.02")
    page.get_by_role("button", name="Create budget").click()
    expect(page).to_have_url(re.compile(r"/console/budgets/spring\?done=created$"))
    expect(page.get_by_role("status")).to_have_text("Budget created.")
    expect(page.locator('[data-figure="cap"]')).to_have_text("10,000")

    with console.api("ecommerce") as shop, console.api("crm") as crm, console.api("operator") as operator:
        post(crm, "/v1/members", {"member_id": "ann"})
        post(shop, "/v1/earn", {"member_id": "ann", "budget": "spring", "points": 2_500})
        post(operator, "/v1/budgets", {"code": "winter", "cap": 100, "unit_cost_micros": 10_000})
    rolled_up(console)
    page.reload()
    burn = named(console.chart_series("chart-budget-burn"))
    assert (burn["Issued"][-1], burn["Cap"][-1], burn["Remaining"][-1]) == (2_500, 10_000, 7_500)
    expect(page.locator('[data-figure="remaining"]')).to_have_text("7,500")
    expect(page.locator('[data-figure="cost"]')).to_have_text("50.00 CNY")

    # A negative top-up: the message next to its field, nothing changed.
    page.get_by_label("Points to add").fill("-5")
    page.get_by_role("button", name="Top up").click()
    expect(page.locator("#e-topup_points")).to_have_text("must be at least 1")
    expect(page.get_by_label("Points to add")).to_have_attribute("aria-invalid", "true")
    expect(page.locator('[data-figure="cap"]')).to_have_text("10,000")
    page.get_by_label("Points to add").fill("5000")
    page.get_by_label("Reason", exact=True).first.fill("more demand")
    page.get_by_role("button", name="Top up").click()
    expect(page.get_by_role("status")).to_have_text("Budget topped up.")
    expect(page.locator('[data-figure="cap"]')).to_have_text("15,000")

    # Moving more than remains is refused next to the field; then a move that fits.
    page.get_by_label("To budget").select_option("winter")
    page.get_by_label("Points to move").fill("20000")
    page.get_by_role("button", name="Move points").click()
    expect(page.locator("#e-move_points")).to_contain_text("not enough points")
    page.get_by_label("Points to move").fill("4000")
    page.get_by_role("button", name="Move points").click()
    expect(page.get_by_role("status")).to_have_text("Points moved.")
    expect(page.locator('[data-figure="cap"]')).to_have_text("11,000")

    rolled_up(console)
    page.reload()
    burn = named(console.chart_series("chart-budget-burn"))
    assert (burn["Issued"][-1], burn["Cap"][-1]) == (2_500, 11_000)
    console.screenshot("budget")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Close budget").click()
    expect(page.get_by_role("status")).to_contain_text("Budget closed")
    expect(page.locator('[data-figure="status"]')).to_have_text("closed")
    expect(page.get_by_role("button", name="Top up")).to_have_count(0)

    page.get_by_role("link", name="← Budgets").click()
    row = page.locator('tr[data-budget="winter"]')
    expect(row.locator('[data-col="cap"]')).to_have_text("4,100")
    expect(page.locator('tr[data-budget="spring"] [data-col="remaining"]')).to_have_text("0")
    console.screenshot("budgets")


def test_an_analyst_sees_no_write_buttons_and_the_server_refuses_a_forged_post(console: Console) -> None:
    with console.api("operator") as operator:
        post(operator, "/v1/budgets", {"code": "base", "cap": 1_000, "unit_cost_micros": 10_000})
    page = console.page
    console.login("analyst")
    console.goto("/console/budgets")
    expect(page.locator('tr[data-budget="base"]')).to_be_visible()
    expect(page.get_by_text("New budget")).to_have_count(0)
    page.get_by_role("link", name="base").click()
    console.chart_series("chart-budget-burn")
    for button in ("Top up", "Move points", "Close budget"):
        expect(page.get_by_role("button", name=button)).to_have_count(0)
    # The same request a marketer's form would send, with this session's cookie and token.
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    r = page.request.post(
        f"{console.url}/budgets/base/top-up", form={"_csrf": token or "", "topup_points": "100"}
    )
    assert r.status == 403
    page.reload()
    expect(page.locator('[data-figure="cap"]')).to_have_text("1,000")
