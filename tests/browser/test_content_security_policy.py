"""The Content-Security-Policy allows scripts and styles from Hearth only: every page works under it in Chromium
without a single violation (a violation would mean a blocked script or style, so a broken page)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in, wait_for_js

pytestmark = pytest.mark.browser

# securitypolicyviolation events, collected from the first moment of every page (init scripts are not subject
# to the page's policy).
COLLECT_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"} at ${event.sourceFile}:${event.lineNumber}`);
});
"""


def violations(page) -> list[str]:
    return page.evaluate("window.__violations")


def test_every_page_works_under_the_policy_without_a_violation(page, embedded_server):
    page.add_init_script(COLLECT_VIOLATIONS)
    console = []
    page.on("console", lambda message: console.append(message.text) if "Content Security Policy" in message.text
            else None)
    seen: dict[str, list[str]] = {}

    log_in(page, embedded_server)
    page.select_option("#model-picker", "tiny")
    page.fill("#prompt", "Show me **markdown** and `code`")
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=60_000)
    seen["chat"] = violations(page)

    page.goto(f"{embedded_server.base_url}/playground/")
    page.wait_for_load_state("networkidle")
    seen["playground"] = violations(page)

    for path in ["/models/", "/models/tiny/", "/jobs/", "/keys/", "/users/", "/admin/", "/admin/auth/user/",
                 "/no-such-page/"]:
        page.goto(f"{embedded_server.base_url}{path}")
        page.wait_for_load_state("networkidle")
        seen[path] = violations(page)

    page.goto(f"{embedded_server.base_url}/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Hearth", timeout=30_000)
    seen["/api/docs"] = violations(page)

    assert {where: found for where, found in seen.items() if found} == {}
    assert console == []


def test_the_policy_blocks_an_inline_script_and_an_inline_style(page, embedded_server):
    """What an injected <script> or style="..." (say, from a model's reply that got past the sanitizer) would do."""
    page.add_init_script(COLLECT_VIOLATIONS)
    log_in(page, embedded_server)
    ran = page.evaluate("""() => {
      const script = document.createElement("script");
      script.textContent = "window.__inlineRan = true";
      document.body.append(script);
      const box = document.createElement("div");
      box.setAttribute("style", "width: 123px");
      document.body.append(box);
      return {script: window.__inlineRan === true, style: box.getBoundingClientRect().width === 123};
    }""")
    assert ran == {"script": False, "style": False}
    wait_for_js(page, "window.__violations.length >= 2", timeout=10)
    assert sorted(v.split(" ")[0] for v in violations(page)) == ["script-src-elem", "style-src-attr"]
