"""The audit log screen in the browser: changes made through the API, filtered and exported."""

from __future__ import annotations

import csv
import io

from playwright.sync_api import expect

from tests.browser.conftest import Console


def test_find_an_api_change_in_the_audit_log_and_export_it(console: Console) -> None:
    with console.api("operator") as api:
        r = api.post(
            "/v1/budgets",
            json={"code": "summer", "cap": 5000, "unit_cost_micros": 10_000},
            headers={"Idempotency-Key": "audit-browser-1"},
        )
        assert r.status_code == 201, r.text
    page = console.page
    console.login("analyst")
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    page.get_by_label("Action").select_option("budget.*")
    page.get_by_role("button", name="Filter").click()
    row = page.locator('tr[data-action="budget.create"]')
    expect(row).to_have_count(1)
    expect(row).to_contain_text("summer")
    console.screenshot("audit")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    path = download.value.path()
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert [(r["action"], r["entity_id"]) for r in rows] == [("budget.create", "summer")]
