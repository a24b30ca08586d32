"""The model library in Chromium: an admin uploads with a progress bar that resumes after a reload; a member
sees no controls and is refused the admin pages."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, log_in

pytestmark = pytest.mark.browser


def test_an_admin_uploads_a_model_with_progress_and_resumes_after_a_reload(page, embedded_server, tiny_gguf):
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/")
    offsets = []
    page.on("request", lambda r: offsets.append(int(r.url.split("offset=")[1])) if "offset=" in r.url else None)
    page.evaluate("window.hearthUpload.chunkSize = 64 * 1024; window.hearthUpload.stopAfter = 3")
    page.set_input_files("#upload-file", str(tiny_gguf))
    page.fill("#upload-name", "browser-upload")
    page.click("#upload-start")
    expect(page.locator("#upload-status")).to_contain_text("Paused at", timeout=30_000)
    assert offsets == [0, 65536, 131072]
    assert 0 < float(page.locator("#upload-progress").get_attribute("value")) < tiny_gguf.stat().st_size
    page.reload()  # the page is gone; the upload is not
    expect(page.locator("#unfinished-uploads")).to_contain_text("browser-upload")
    offsets.clear()
    page.evaluate("window.hearthUpload.chunkSize = 64 * 1024")
    page.set_input_files("#upload-file", str(tiny_gguf))
    page.click("#upload-start")
    expect(page.locator("#upload-status")).to_contain_text("Added browser-upload to the library", timeout=60_000)
    assert offsets[0] == 3 * 65536  # resumed where it stopped, nothing sent twice
    page.reload()
    expect(page.get_by_role("link", name="browser-upload")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "models.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete browser-upload").click()
    expect(page.locator(".flash")).to_contain_text("Deleted browser-upload")
    expect(page.get_by_role("link", name="browser-upload")).to_have_count(0)


def test_a_member_sees_no_admin_controls_and_is_refused_the_admin_pages(page, embedded_server):
    embedded_server.create_user("browsing-member", "pw-member-456")
    log_in(page, embedded_server, "browsing-member", "pw-member-456")
    page.goto(f"{embedded_server.base_url}/models/")
    expect(page.get_by_role("link", name="tiny", exact=True)).to_be_visible()
    expect(page.locator("#upload-form")).to_have_count(0)
    expect(page.locator("form.delete-model")).to_have_count(0)
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    for path in ("/users/", "/admin/"):
        response = page.goto(f"{embedded_server.base_url}{path}")
        assert response.status == 403 or "/login/" in page.url, (path, response.status, page.url)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(f"{embedded_server.base_url}/models/tiny/delete/",
                                 headers={"X-CSRFToken": token, "Referer": f"{embedded_server.base_url}/models/"})
    assert response.status == 403 and "CSRF" not in response.text()


def test_the_jobs_page_shows_a_running_job_live_and_its_owner_cancels_it(page, embedded_server):
    import threading

    from tests.conftest import openai_client

    # A raw completion with end-of-text banned (Gemma's <eos> 1, <end_of_turn> 106) runs until cancelled: a chat
    # reply of the base demo model may end after a dozen tokens, before the Cancel button is reached.
    outcome = {}

    def generate() -> None:
        try:
            stream = openai_client(embedded_server).completions.create(
                model="demo", prompt="Counting slowly: 1, 2, 3, 4, 5,", max_tokens=1500, stream=True,
                logit_bias={"1": -100, "106": -100})
            outcome["chunks"] = sum(1 for _ in stream)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = error

    generating = threading.Thread(target=generate, daemon=True)
    generating.start()
    log_in(page, embedded_server)
    page.get_by_role("link", name="Jobs").click()
    row = page.locator("#running-jobs tr[data-job]").first
    expect(row.locator(".progress")).to_contain_text(re.compile(r"\d+ tokens · [\d.]+ tok/s"), timeout=120_000)
    job = row.get_attribute("data-job")
    row.get_by_role("button", name=re.compile("Cancel job")).click()
    expect(page.locator(".flash")).to_contain_text("Cancelled the job")
    finished = page.locator(f'#finished-jobs tr[data-job="{job}"]')
    expect(finished).to_contain_text(re.compile("cancelled|stopped"), timeout=30_000)
    generating.join(timeout=60)
    assert "error" not in outcome and outcome["chunks"] < 1500
