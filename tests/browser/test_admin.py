"""Administration in a real browser: an API key shown once, used, revoked; an operator invited,
the invitation accepted in a fresh browser, and the invitee logged in with their new role."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import Console


def test_an_api_key_is_shown_once_works_and_is_revoked(console: Console) -> None:
    page = console.page
    page.on("dialog", lambda dialog: dialog.accept())
    console.login("admin")
    console.goto("/console/admin")
    page.get_by_label("Name").fill("Till system")
    page.get_by_label("Role").select_option("operator")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("[data-secret]").inner_text()
    assert key.startswith("lk_")
    console.screenshot("admin")
    headers = {"Authorization": f"Bearer {key}"}
    seen = httpx.get(f"{console.server.url}/v1/programme", headers=headers)
    assert seen.status_code == 200 and seen.json()["code"] == console.programme.code
    console.goto("/console/admin/keys")
    expect(page.locator("[data-secret]")).to_have_count(0)
    expect(page.get_by_text(key)).to_have_count(0)
    page.get_by_role("button", name="Revoke Till system").click()
    expect(page.get_by_role("row", name=re.compile("Till system"))).to_contain_text("revoked")
    deadline = time.monotonic() + 5  # every API process drops the key within a second
    while True:
        status = httpx.get(f"{console.server.url}/v1/programme", headers=headers).status_code
        if status == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 401


def test_an_invited_operator_accepts_and_logs_in(console: Console, browser: Any) -> None:
    page = console.page
    console.login("admin")
    console.goto("/console/admin/operators")
    email = f"invitee-{uuid.uuid4().hex[:8]}@example.invalid"
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Role", exact=True).select_option("support")
    page.get_by_role("button", name="Create invitation").click()
    link = page.locator("[data-invite-link]").inner_text()
    assert "/console/invite/" in link
    expect(page.locator(f'tr[data-invitation="{email}"]')).to_contain_text("support")

    context = browser.new_context()  # the invitee's own browser: no cookie of the admin's
    try:
        other = context.new_page()
        errors: list[str] = []
        other.on("pageerror", lambda exc: errors.append(str(exc)))
        other.goto(link)
        expect(other.get_by_text("as support")).to_be_visible()
        other.get_by_label("Choose a password").fill("one long password")
        other.get_by_label("Repeat the password").fill("another long password")
        other.get_by_role("button", name="Accept the invitation").click()
        expect(other.locator("#e-confirm")).to_contain_text("does not match")
        password = "a long invitee password"
        other.get_by_label("Choose a password").fill(password)
        other.get_by_label("Repeat the password").fill(password)
        other.get_by_role("button", name="Accept the invitation").click()
        expect(other.get_by_role("status")).to_contain_text("is ready")
        other.get_by_role("link", name="Log in").click()
        other.get_by_label("Email").fill(email)
        other.get_by_label("Password").fill(password)
        other.get_by_role("button", name="Log in").click()
        expect(other.locator(".who")).to_contain_text(email)
        expect(other.locator(".who")).to_contain_text("support")
        other.goto(link)
        expect(other.get_by_role("alert")).to_contain_text("not valid")  # the link worked once
        assert errors == []
    finally:
        context.close()
    console.goto("/console/admin/operators")
    expect(page.locator(f'tr[data-operator="{email}"]')).to_be_visible()
    expect(page.locator(f'tr[data-invitation="{email}"]')).to_have_count(0)
