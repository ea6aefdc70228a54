"""Webhooks in a real browser: an endpoint to a local receiver, its secret shown once, a test
message, and a real event's delivery in the log (sent by the live worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Console
from tests.support import new_key
from tests.webhook_receiver import ThreadedReceiver


@pytest.fixture
def receiver() -> Iterator[ThreadedReceiver]:
    # The test settings allow private targets (LOYALTY_WEBHOOK_ALLOW_PRIVATE_TARGETS), as a
    # deployment with its receivers on the same network would.
    threaded = ThreadedReceiver()
    yield threaded
    threaded.stop()


def test_an_endpoint_gets_a_test_and_a_real_delivery(console: Console, receiver: ThreadedReceiver) -> None:
    page = console.page
    console.login("admin")
    console.goto("/console/webhooks")
    expect(page.get_by_text("No webhook endpoints yet.")).to_be_visible()
    page.get_by_label("URL").fill(receiver.receiver.url)
    page.get_by_label("Description").fill("CRM sync")
    page.get_by_label("All events").uncheck()
    page.get_by_label("points.earned").check()
    page.get_by_role("button", name="Create endpoint").click()
    expect(page.get_by_role("definition").filter(has_text="points.earned")).to_have_count(1)
    secret = page.locator("[data-secret]").inner_text()
    assert secret.startswith("whsec_")
    receiver.receiver.secret = secret

    page.get_by_role("button", name="Send a test").click()
    expect(page.locator("[data-ping]")).to_have_attribute("data-ping", "delivered")
    assert [(m.json["type"], m.verified) for m in receiver.receiver.received] == [("webhook.ping", True)]
    expect(page.locator("[data-secret]")).to_have_count(0)  # the secret was shown once

    api = console.api("operator")
    assert (
        api.post(
            "/v1/members", json={"member_id": "wh-1"}, headers={"Idempotency-Key": new_key()}
        ).status_code
        == 201
    )
    budget = {"code": "hooks", "cap": 1000, "unit_cost_micros": 1}
    assert api.post("/v1/budgets", json=budget, headers={"Idempotency-Key": new_key()}).status_code == 201
    earn = {"member_id": "wh-1", "points": 7, "budget": "hooks", "reference": "o-7"}
    assert api.post("/v1/earn", json=earn, headers={"Idempotency-Key": new_key()}).status_code in (200, 201)
    row = page.locator("tr[data-delivery]")
    deadline = time.monotonic() + 30  # the worker sends every 5 s
    while (
        row.count() == 0 or row.get_attribute("data-status") != "succeeded"
    ) and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-status", "succeeded")
    expect(row).to_contain_text("points.earned")
    expect(row).to_contain_text("member:wh-1")
    earned = [m for m in receiver.receiver.received if m.json["type"] == "points.earned"]
    assert len(earned) == 1 and earned[0].verified and earned[0].json["data"]["points"] == 7
    console.screenshot("webhooks")

    page.get_by_role("button", name="Disable").click()
    expect(page.locator('[data-figure="state"]')).to_have_text("disabled")
