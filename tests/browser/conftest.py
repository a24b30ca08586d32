"""Debian's Chromium driven by Python Playwright (never `playwright install`: it would download a browser)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    """Module-scoped: sync Playwright runs an event loop in this thread until it closes, which would break
    asyncio.run() in the tests that follow."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (.ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-gpu"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    yield page
    context.close()


def log_in(page, server, username="admin", password=None):
    from tests.servers import ADMIN_PASSWORD

    page.goto(f"{server.base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password or ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.base_url}/")


def wait_for_js(page, expression: str, timeout: float = 60) -> None:
    """Wait until a JavaScript expression is true. Polls with page.evaluate, which runs outside the page's
    Content-Security-Policy; Playwright's wait_for_function compiles its predicate inside the page, which the
    policy (script-src 'self', no 'unsafe-eval') forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        page.wait_for_timeout(100)
