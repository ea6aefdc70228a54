"""Imports and exports in a real browser: 5,000 members uploaded with a few bad rows, the
progress bar polled to 100%, the error report downloaded; a points file; the transactions CSV."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import Console
from tests.support import new_key

BAD_LINES = {101: "status", 2502: "member_id", 4999: "attributes"}  # file line -> refused field


def _members_csv(count: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["member_id", "status", "attributes"])
    for n in range(count):
        line = n + 2
        member, status, attributes = f"bm-{n:05d}", "active", '{"city": "Lyon"}'
        if BAD_LINES.get(line) == "status":
            status = "sleeping"
        elif BAD_LINES.get(line) == "member_id":
            member = ""
        elif BAD_LINES.get(line) == "attributes":
            attributes = "[not json"
        writer.writerow([member, status, attributes])
    return out.getvalue().encode()


def _finished(console: Console) -> None:
    page = console.page
    expect(page.locator("#import-progress")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")


def test_import_5000_members_with_an_error_report(console: Console) -> None:
    page = console.page
    console.login("marketer")
    console.goto("/console/imports")
    page.get_by_label("Members file (CSV)").set_input_files(
        files=[{"name": "members.csv", "mimeType": "text/csv", "buffer": _members_csv(5000)}]
    )
    page.get_by_role("button", name="Upload members").click()
    expect(page).to_have_url(re.compile(r"/console/imports/\d+$"))
    _finished(console)
    expect(page.locator('[data-figure="applied"]')).to_have_text("4997")
    expect(page.locator('[data-figure="rejected"]')).to_have_text("3")
    console.screenshot("imports")
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Download the error report")).click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {int(r["line"]): r["error_field"] for r in rows} == BAD_LINES
    member = console.api("operator").get("/v1/members/bm-00042")
    assert member.status_code == 200 and member.json()["attributes"]["city"] == "Lyon"


def test_import_points_and_export_the_transactions(console: Console) -> None:
    page = console.page
    api = console.api("operator")
    assert (
        api.post(
            "/v1/budgets",
            json={"code": "welcome", "cap": 100_000, "unit_cost_micros": 500},
            headers={"Idempotency-Key": new_key()},
        ).status_code
        == 201
    )
    for member in ("pa", "pb"):
        assert (
            api.post(
                "/v1/members", json={"member_id": member}, headers={"Idempotency-Key": new_key()}
            ).status_code
            == 201
        )
    console.login("admin")
    console.goto("/console/imports")
    page.get_by_label("Budget").select_option("welcome")
    body = b"member_id,points,reference,reason\npa,300,camp-1,welcome\npb,-5,camp-2,oops\npb,200,camp-3,welcome\n"
    page.get_by_label("Points file (CSV)").set_input_files(
        files=[{"name": "points.csv", "mimeType": "text/csv", "buffer": body}]
    )
    page.get_by_role("button", name="Upload points").click()
    _finished(console)
    expect(page.locator('[data-figure="applied"]')).to_have_text("2")
    expect(page.locator('[data-figure="rejected"]')).to_have_text("1")
    assert api.get("/v1/members/pa/balance").json()["available"] == 300

    console.goto("/console/imports")
    expect(page.locator("tr[data-import]")).to_have_count(1)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    assert download.value.suggested_filename.startswith("transactions-")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    earned = sorted((r["member_id"], r["reference"]) for r in rows if r["kind"] == "earn")
    assert earned == [("pa", "camp-1"), ("pb", "camp-3")]
