"""Phone width, the keyboard alone, and both colour schemes."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, log_in

ARTIFACTS = SCREENSHOTS.parent.parent / "tests" / "artifacts"

pytestmark = pytest.mark.browser


def tab_to(page, selector: str, limit: int = 60, key: str = "Tab") -> None:
    for _ in range(limit):
        page.keyboard.press(key)
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_a_person_chats_and_regenerates_with_the_keyboard_alone(page, embedded_server):
    page.goto(f"{embedded_server.base_url}/login/")
    expect(page.locator("input[name=username]")).to_be_focused()  # autofocus: no click needed
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    from tests.servers import ADMIN_PASSWORD

    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{embedded_server.base_url}/")
    expect(page.locator("#prompt")).to_be_focused()
    # The model picker is a few steps back from the message box, however long the sidebar.
    tab_to(page, "#model-picker", limit=12, key="Shift+Tab")
    page.select_option("#model-picker", "tiny")  # a focused <select> changes with the arrow keys, too
    tab_to(page, "#prompt")
    page.keyboard.type("Typed, not clicked")
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=60_000)
    tab_to(page, "button.regenerate", limit=12, key="Shift+Tab")  # the reply's buttons are just above the box
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant .versions .count")).to_have_text("2/2", timeout=30_000)


@pytest.mark.parametrize("path", ["/", "/models/", "/jobs/", "/playground/", "/users/"])
def test_pages_fit_a_phone_screen(browser, embedded_server, path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        log_in(page, embedded_server)
        page.goto(f"{embedded_server.base_url}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} is {overflow}px wider than the phone"
        if path == "/":
            expect(page.locator("#prompt")).to_be_in_viewport()
            expect(page.locator("#send")).to_be_in_viewport(ratio=1)
            expect(page.locator("#prompt")).to_be_in_viewport(ratio=1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"phone{path.replace('/', '-').rstrip('-') or '-chat'}.png"))
    finally:
        context.close()


def test_dark_and_light_themes_follow_the_system(page, embedded_server):
    log_in(page, embedded_server)
    backgrounds = {}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        backgrounds[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert backgrounds["light"] == "rgb(251, 250, 248)"
    assert backgrounds["dark"] == "rgb(23, 21, 19)"
