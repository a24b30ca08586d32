"""The library page's "Pull from Hugging Face" form in Chromium, against a server whose HF_ENDPOINT is the tests'
stand-in hub: the file list from the hub, the progress bar while the file comes (held half-way by the hub), the model
in the library at the end; and Cancel, which stops the pull and removes what it fetched."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests import servers
from tests.browser.conftest import log_in, wait_for_js

pytestmark = pytest.mark.browser
Q4_SIZE = 4189952


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub, tiny_gguf):
    data = tmp_path_factory.mktemp("pull-browser")
    server = servers.start_embedded(data, {"tiny": tiny_gguf}, HF_ENDPOINT=hub.url, HF_HOME=str(data / "hf-home"),
                                    HF_TOKEN="", HF_HUB_OFFLINE="0")
    yield server
    server.stop()


BAR = "#pull-table tr[data-status] .pull-bar"


def test_an_admin_lists_a_repos_files_pulls_one_and_watches_its_progress_bar(page, server, hub):
    hub.hold("tiny-Q4_K_M.gguf", 2_500_000)  # the hub stalls after 2.5 MB until the test lets it go
    try:
        log_in(page, server)
        page.goto(f"{server.base_url}/models/")
        page.fill("#pull-repo", hub.tiny.gguf)
        page.click("#pull-lookup")
        expect(page.locator("#pull-lookup-status")).to_contain_text("3 GGUF model(s)")
        picked = page.locator("#pull-file option:checked")
        expect(picked).to_have_text("tiny-Q4_K_M.gguf — Q4_K_M — 4.0 MB")  # the default: Q4_K_M
        page.click("#pull-start")
        expect(page.locator(".flash")).to_contain_text(f"Pulling {hub.tiny.gguf}")
        wait_for_js(page, f"(() => {{ const bar = document.querySelector('{BAR}');"
                          f" return bar && Number(bar.value) >= 2 * 1024 * 1024; }})()", timeout=30)
        bar = page.locator(BAR)
        assert float(bar.get_attribute("max")) == Q4_SIZE
        detail = page.locator("#pull-table .pull-detail")
        expect(detail).to_contain_text("downloading tiny-Q4_K_M.gguf: 2.0 MB of 4.0 MB (50%)")
        expect(page.locator("#pull-table .pull-status")).to_have_text("running")
    finally:
        hub.release("tiny-Q4_K_M.gguf")
    expect(page.locator("#pull-table")).to_contain_text("Added tiny-q4_k_m to the library.", timeout=30_000)
    assert float(page.locator(BAR).get_attribute("value")) == Q4_SIZE
    page.reload()
    expect(page.locator('tr[data-model="tiny-q4_k_m"]')).to_contain_text("Q4_K_M")
    page.click('tr[data-model="tiny-q4_k_m"] a')
    expect(page.locator("#provenance")).to_contain_text(hub.tiny.gguf)


def test_cancel_stops_a_pull_and_removes_what_it_fetched(page, server, hub):
    hub.hold("tiny-Q4_K_M-00001-of-00003.gguf", 100)  # the split model's first part stalls at once
    try:
        log_in(page, server)
        page.goto(f"{server.base_url}/models/")
        page.fill("#pull-repo", hub.tiny.split)
        page.fill("#pull-name", "split-to-cancel")
        page.click("#pull-start")
        row = page.locator("#pull-table tr", has_text="split-to-cancel")
        expect(row.locator(".pull-status")).to_have_text("running", timeout=30_000)
        expect(row.locator(".pull-detail")).to_contain_text("downloading tiny-Q4_K_M-00001-of-00003.gguf")
        row.get_by_role("button", name=f"Cancel the pull of {hub.tiny.split}").click()
        expect(page.locator(".flash")).to_contain_text("Cancelled the pull")
        expect(page.locator("#pull-table tr", has_text="split-to-cancel").locator(".pull-status")).to_have_text(
            "cancelled")
    finally:
        hub.release("tiny-Q4_K_M-00001-of-00003.gguf")
    staging = server.data_dir / "models" / ".pulls"
    for _ in range(50):  # the puller removes them within half a second
        if not any(staging.iterdir()):
            break
        page.wait_for_timeout(100)
    assert not any(staging.iterdir())
    assert not (server.data_dir / "models" / "split-to-cancel").exists()
