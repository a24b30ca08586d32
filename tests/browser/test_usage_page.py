"""The usage page in Chromium: uPlot's charts drawn from the page's data under the Content-Security-Policy, and the
quotas page's form, whose refusal the chat page then shows in words."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests import servers
from tests.browser.conftest import log_in
from tests.browser.test_content_security_policy import COLLECT_VIOLATIONS, violations

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_gguf):
    hearth = servers.start_embedded(tmp_path_factory.mktemp("usage"), {"tiny": tiny_gguf})
    yield hearth
    hearth.stop()


def test_the_usage_page_draws_its_charts_and_an_admins_quota_stops_the_chat_with_a_message(page, server):
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                        headers={"Authorization": f"Bearer {server.api_key}"},
                        json={"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    page.add_init_script(COLLECT_VIOLATIONS)
    log_in(page, server)

    page.goto(f"{server.base_url}/usage/")
    expect(page.locator(".usage-chart canvas")).to_have_count(5, timeout=10_000)  # all but the groups' chart:
    expect(page.locator(".usage-chart[data-chart=group]")).to_have_text("None in this period.")  # admin is in none
    expect(page.locator("#usage-speed tbody tr")).to_have_count(1)
    assert page.locator(".usage-chart[data-chart=model] .u-legend").inner_text().count("tiny") == 1
    assert violations(page) == []

    page.goto(f"{server.base_url}/quotas/")
    page.select_option("select[name=subject]", label="user admin")
    page.select_option("select[name=period]", "day")
    page.fill("input[name=tokens]", "1")
    page.click("#set-quota button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Set the daily quota of 1 token for user admin")
    expect(page.locator("#quotas tbody tr")).to_have_count(1)

    page.goto(f"{server.base_url}/")
    page.select_option("#model-picker", "tiny")
    page.fill("#prompt", "hello")
    page.keyboard.press("Enter")
    page.fill("#prompt", "hello again")
    page.keyboard.press("Enter")
    expect(page.locator("body")).to_contain_text("Your daily quota of 1 token is used up", timeout=30_000)
    assert violations(page) == []
