"""Logging in and out of the console in a real browser, and what each role may see."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import Console


def test_login_dashboard_and_logout(console: Console) -> None:
    page = console.page
    console.goto("/console/budgets")
    # Not logged in: the login form, which brings the operator back where they were going.
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    console.screenshot("login")
    email = console.operator("analyst")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("correct horse battery staple")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".who")).to_contain_text(email)
    console.goto("/console")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/console/login$"))
    console.goto("/console")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_a_wrong_password_and_then_the_lockout(console: Console) -> None:
    page = console.page
    email = console.operator("admin")
    console.goto("/console/login")
    for attempt in range(5):
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(f"wrong password {attempt}")
        page.get_by_role("button", name="Log in").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("locked" if attempt == 4 else "Wrong email or password.")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("correct horse battery staple")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("locked")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_a_form_posted_without_its_csrf_token_is_refused(console: Console) -> None:
    page = console.page
    console.login("admin")
    # Strip the token from the logout form, as a forged cross-site form would lack it.
    page.evaluate("() => document.querySelector('form.logout input[name=_csrf]').remove()")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Form expired")).to_be_visible()
    console.goto("/console")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()  # still logged in


def test_the_phone_layout_has_a_menu_button(console: Console) -> None:
    page = console.page
    page.set_viewport_size({"width": 390, "height": 844})
    console.login("analyst")
    nav = page.locator("nav#nav")
    expect(nav).to_be_hidden()
    page.get_by_role("button", name="Menu").click()
    expect(nav).to_be_visible()
    expect(nav.get_by_role("link", name="Dashboard")).to_be_visible()
