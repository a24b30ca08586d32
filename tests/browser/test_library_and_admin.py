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
    from tests.integration.chat_client import ChatSocket, login

    chat = ChatSocket(embedded_server, login(embedded_server))
    try:
        chat.send(type="send", conversation=None, model="demo", content="Write a long essay about bridges.")
        job = chat.receive()["job"]
        log_in(page, embedded_server)
        page.get_by_role("link", name="Jobs").click()
        row = page.locator(f'#running-jobs tr[data-job="{job}"]')
        expect(row.locator(".progress")).to_contain_text(re.compile(r"\d+ tokens · [\d.]+ tok/s"), timeout=120_000)
        row.get_by_role("button", name=re.compile("Cancel job")).click()
        expect(page.locator(".flash")).to_contain_text("Cancelled the job")
        finished = page.locator(f'#finished-jobs tr[data-job="{job}"]')
        expect(finished).to_contain_text(re.compile("cancelled|stopped"), timeout=30_000)
    finally:
        chat.close()
