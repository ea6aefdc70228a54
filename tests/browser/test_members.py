"""Member 360 in a real browser: find a member, read their page, and the support actions."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import Console, unique

NAMES = {"en": "Free returns", "zh-CN": "免费退货"}


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code in (200, 201), f"{path}: {r.status_code} {r.text}"
    return dict(r.json()) if r.content else {}


def _seed(console: Console) -> dict[str, Any]:
    """A member with points, a hold, a tier ladder and a granted benefit, all through the API."""
    operator, shop, crm = console.api("operator"), console.api("ecommerce"), console.api("crm")
    member = unique("ann")
    email = f"{member}@example.com"
    _post(operator, "/v1/budgets", {"code": "base", "cap": 100_000, "unit_cost_micros": 10_000})
    _post(crm, "/v1/members", {"member_id": member, "attributes": {"email": email, "city": "Lyon"}})
    _post(shop, "/v1/earn", {"member_id": member, "budget": "base", "points": 500, "reason": "order 1",
                             "reference": "order-1", "expiry": {"days": 365}})  # fmt: skip
    hold = _post(shop, "/v1/holds", {"member_id": member, "points": 100, "reference": "cart-7"})
    ladder = {
        "tiers": [
            {"code": "bronze", "name": "Bronze", "rank": 0},
            {"code": "gold", "name": "Gold", "rank": 1,
             "entry": {"fact": "qualifying_points", "op": ">=", "value": 5000}},
        ]
    }  # fmt: skip
    version = _post(operator, "/v1/tiers/versions", ladder)["version"]
    _post(operator, f"/v1/tiers/versions/{version}/publish", {})
    _post(operator, "/v1/benefits", {"code": "returns", "type": "quota", "names": NAMES,
                                     "params": {"limit": 3, "period": "month"}})  # fmt: skip
    grant = _post(
        crm, f"/v1/members/{member}/benefit-grants", {"benefit": "returns", "reason": "vip gesture"}
    )
    return {"member": member, "email": email, "hold": hold["hold_id"], "grant": grant["id"]}


def test_find_a_member_and_act_on_their_360(console: Console) -> None:
    seeded = _seed(console)
    member = seeded["member"]
    page = console.page
    email = console.login("support")
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Members").click()
    expect(page.get_by_role("heading", name="Members")).to_be_visible()

    # By the beginning of the id, then by an attribute.
    page.get_by_label("Search by").select_option("id")
    page.get_by_label("Search", exact=True).fill(member[:7])
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.members-found").get_by_role("link", name=member)).to_be_visible()
    page.get_by_label("Search by").select_option("attribute")
    page.get_by_label("Search", exact=True).fill(f"email = {seeded['email']}")
    page.get_by_role("button", name="Search").click()
    found = page.locator("table.members-found tbody tr")
    expect(found).to_have_count(1)
    expect(found).to_contain_text(seeded["email"])
    console.screenshot("member-search")
    found.get_by_role("link", name=member).click()

    # The 360: balance with its hold, lots, history, tier and benefits.
    expect(page.get_by_role("heading", name=re.compile(f"Member {member}"))).to_be_visible()
    expect(page.locator('[data-figure="available"]')).to_have_text("400")
    expect(page.locator('[data-figure="held"]')).to_have_text("100")
    expect(page.locator("table.lots tbody tr")).to_have_count(1)
    expect(page.locator("table.history")).to_contain_text("order-1")
    expect(page.locator("table.holds")).to_contain_text("cart-7")
    expect(page.locator('[data-figure="tier-now"]')).to_have_text("bronze")
    expect(page.locator('[data-explain="progress"]')).to_contain_text("needs")
    expect(page.locator('tr[data-benefit="returns"] [data-figure="left"]')).to_have_text("3")
    console.screenshot("member-360")

    # A manual credit: the reason is required, and nothing is written before the confirm step.
    page.get_by_label("Points (+ credit").fill("250")
    page.get_by_role("button", name="Review adjustment").click()
    expect(page.locator("#e-reason")).to_contain_text("required")
    expect(page.locator('[data-figure="available"]')).to_have_text("400")
    page.get_by_label("Points (+ credit").fill("250")
    page.locator("#f-reason").fill("Goodwill: parcel arrived late")
    page.get_by_role("button", name="Review adjustment").click()
    expect(page.get_by_role("heading", name="Confirm the adjustment")).to_be_visible()
    expect(page.locator('[data-figure="after"]')).to_have_text("650")
    page.get_by_role("button", name="Confirm adjustment").click()
    expect(page.get_by_role("status")).to_contain_text("The adjustment was posted.")
    expect(page.locator('[data-figure="available"]')).to_have_text("650")
    newest = page.locator("table.history tbody tr").first
    expect(newest).to_contain_text("adjust")
    expect(newest).to_contain_text("+250")
    expect(newest).to_contain_text("Goodwill: parcel arrived late")

    # A tier pin with an expiry.
    page.get_by_label("Kind").select_option("fixed")
    page.get_by_label("Pin to tier").select_option("gold")
    page.get_by_label("Until").fill((datetime.now(UTC) + timedelta(days=90)).date().isoformat())
    page.get_by_label("Reason for the pin").fill("Complaint settled with gold for a quarter")
    page.get_by_role("button", name="Pin tier").click()
    expect(page.get_by_role("status")).to_contain_text("pin was set")
    expect(page.locator('[data-figure="tier-now"]')).to_have_text("gold")
    expect(page.locator('[data-figure="pin"]')).to_contain_text("fixed at gold")
    expect(page.locator("table.tier-history")).to_contain_text("Complaint settled")

    # Voiding the hold gives its points back (after the browser's confirm dialog).
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Void hold #{seeded['hold']}").click()
    expect(page.get_by_role("status")).to_contain_text("voided")
    expect(page.locator('[data-figure="held"]')).to_have_text("0")
    expect(page.locator('[data-figure="available"]')).to_have_text("750")

    # Revoking the grant takes the benefit away.
    page.get_by_label(f"Reason to revoke grant #{seeded['grant']}").fill("granted to the wrong member")
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    expect(page.locator('tr[data-benefit="returns"]')).to_have_count(0)

    # Every one of these changes is in the audit log, as this operator, with its reason.
    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("Entity", exact=True).fill("member")
    page.get_by_label("Entity id").fill(seeded["member"])
    page.get_by_role("button", name="Filter").click()
    adjusted = page.locator('tr[data-action="member.adjust_points"]')
    expect(adjusted).to_have_count(1)
    expect(adjusted).to_contain_text("Goodwill: parcel arrived late")
    expect(adjusted).to_contain_text(email)
    expect(page.locator('tr[data-action="member.tier_pin"]')).to_contain_text("Complaint settled")
    expect(page.locator('tr[data-action="member.benefit_revoke"]')).to_contain_text(
        "granted to the wrong member"
    )


def test_an_analyst_sees_no_actions_and_a_forged_post_is_refused(console: Console) -> None:
    seeded = _seed(console)
    page = console.page
    console.login("analyst")
    console.goto(f"/console/members/{seeded['member']}")
    expect(page.locator('[data-figure="available"]')).to_have_text("400")
    expect(page.get_by_role("button", name="Review adjustment")).to_have_count(0)
    expect(page.get_by_role("button", name="Pin tier")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Void"))).to_have_count(0)
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
    # At phone width the page fits the screen (wide tables scroll inside their own box).
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    console.goto(f"/console/members?q={seeded['member'][:5]}")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    forged = page.request.post(
        f"{console.url}/members/{seeded['member']}/adjust",
        form={"_csrf": csrf or "", "points": "9999", "reason": "forged", "confirm": "yes", "key": "c" * 32},
    )
    assert forged.status == 403
    balance = console.api("operator").get(f"/v1/members/{seeded['member']}/balance").json()
    assert balance["available"] == 400
