"""Every screen in the menu, as each role sees it: it loads, names every input, fits a phone,
logs no JavaScript error, and shows only what the role may use."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Console


def _menu(console: Console) -> list[tuple[str, str]]:
    links = console.page.locator("nav#nav a")
    return [
        (links.nth(i).inner_text(), links.nth(i).get_attribute("href") or "") for i in range(links.count())
    ]


@pytest.mark.parametrize("role", ["admin", "analyst"])
def test_every_screen_loads_with_labels_at_desktop_and_phone_width(console: Console, role: str) -> None:
    console.login(role)
    menu = _menu(console)
    assert menu and menu[0] == ("Dashboard", "/console")
    for width in (1280, 390):
        console.page.set_viewport_size({"width": width, "height": 900})
        for label, href in menu:
            response = console.goto(href)
            assert response is not None and response.status == 200, (label, href)
            expect(console.page.locator("main h1").first).to_be_visible()
            assert console.unlabelled_inputs() == [], (label, width)
            assert not console.overflows_horizontally(), (label, width)


def test_the_menu_hides_what_a_role_may_not_use(console: Console) -> None:
    console.login("admin")
    admin_menu = {label for label, _ in _menu(console)}
    console.page.get_by_role("button", name="Log out").click()
    console.login("analyst")
    analyst_menu = {label for label, _ in _menu(console)}
    assert "Dashboard" in analyst_menu
    # Analysts read everything but administer nothing.
    assert analyst_menu <= admin_menu
    if "Administration" in admin_menu:
        assert "Administration" not in analyst_menu


def test_keyboard_only_skip_link_and_menu(console: Console) -> None:
    page = console.page
    console.login("analyst")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#main$"))
    # The menu's links are reachable with Tab from the top of the page.
    page.goto(console.url)
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.closest('nav#nav') !== null"):
            break
    else:
        raise AssertionError("no menu link reached with Tab")
