"""Benefits in a real browser: create a benefit, give it to a tier, see who is entitled (count and
list) and export them as CSV."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Console


def _post(client: Any, path: str, body: Any = None, status: int = 201) -> Any:
    r = client.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == status, r.text
    return r.json()


def test_create_a_benefit_give_it_to_a_tier_and_export_who_is_entitled(
    console: Console, tmp_path: Path
) -> None:
    page = console.page
    everyone = {"fact": "qualifying_points", "op": ">=", "value": 0}
    ladder = {
        "note": "t",
        "tiers": [{"code": "bronze", "rank": 0}, {"code": "silver", "rank": 1, "entry": everyone}],
    }
    members = ["m1", "m2", "m3"]
    with console.api() as api, console.api("crm") as crm:
        version = _post(api, "/v1/tiers/versions", ladder)["version"]
        _post(api, f"/v1/tiers/versions/{version}/publish", {}, status=200)
        for member in members:
            _post(crm, "/v1/members", {"member_id": member})
            assert _post(api, f"/v1/members/{member}/tier/assess", {}, status=200)["tier"] == "silver"
    console.login("marketer")
    console.goto("/console/benefits")
    expect(page.get_by_text("No benefits yet")).to_be_visible()
    page.get_by_role("link", name="New benefit").click()
    page.get_by_label("Code", exact=True).fill("returns")
    page.get_by_label("Type", exact=True).select_option("quota")
    page.get_by_label("Name (en)").fill("Free returns")
    page.get_by_label("Quota: uses per period").fill("3")
    page.get_by_label("Quota or gift: period (day, week, month, year)").fill("month")
    page.get_by_role("button", name="Create").click()
    # The Chinese name is required: the refusal sits next to the names.
    expect(page.locator("#e-names\\.en")).to_contain_text("zh-CN")
    page.get_by_label("Name (zh-CN)").fill("免费退货")
    page.get_by_role("button", name="Create").click()
    expect(page).to_have_url(re.compile(r"/console/benefits/returns$"))
    expect(page.locator("[data-figure=entitled-total]")).to_have_text("0")

    page.get_by_role("navigation", name="Console").get_by_role("link", name="Benefits").click()
    page.get_by_label("Tier", exact=True).fill("silver")
    page.get_by_label("returns").check()
    page.get_by_role("button", name="Save the tier's benefits").click()
    expect(page.locator("tr[data-tier=silver]")).to_contain_text("returns")
    console.screenshot("benefits")

    page.locator("tr[data-benefit=returns] a").click()
    expect(page.locator("[data-figure=entitled-total]")).to_have_text("3")
    expect(page.locator("[data-figure=entitled-tier]")).to_have_text("3")
    expect(page.locator("table[data-list=entitled] tbody tr")).to_have_text(members)
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    saved = tmp_path / "entitled.csv"
    download.value.save_as(saved)
    assert saved.read_bytes().decode().split("\r\n") == ["member_id", *members, ""]
    with console.api("marketing") as marketing:
        count = marketing.get("/v1/benefits/returns/members/count").json()
    assert count["total"] == 3 and count["by_tier"] == 3
