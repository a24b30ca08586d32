"""Export, import and sharing from the chat page, as a member clicks through them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in
from tests.browser.test_chat_features import stored_conversation

pytestmark = pytest.mark.browser
DATA = Path(__file__).resolve().parent.parent / "data"


def test_a_member_exports_a_chat_imports_a_chatgpt_export_and_shares_a_snapshot(page, embedded_server):
    log_in(page, embedded_server)
    conversation = stored_conversation(
        embedded_server, [("user", "What is $e^{i\\pi}$?"), ("assistant", "It is $-1$.")], title="Euler")
    page.goto(f"{embedded_server.base_url}/c/{conversation}/")
    page.click("#settings summary")
    with page.expect_download() as download:
        page.locator("#export-links a", has_text="JSON").click()
    data = json.loads(Path(download.value.path()).read_text())
    assert [m["content"] for m in data["conversations"][0]["messages"]] == ["What is $e^{i\\pi}$?", "It is $-1$."]
    with page.expect_download() as download:
        page.locator("#export-links a", has_text="Markdown").click()
    assert Path(download.value.path()).read_text().startswith("# Euler\n")

    page.click("#export-import-link")
    expect(page.locator("h1")).to_have_text("Export and import")
    page.set_input_files("#import-form input[type=file]", str(DATA / "chatgpt_conversations.json"))
    page.click("#import-form button[type=submit]")
    expect(page.locator(".flash li.success")).to_contain_text("Imported 2 conversations (8 messages)")
    page.set_input_files("#import-form input[type=file]", {"name": "notes.json", "mimeType": "application/json",
                                                           "buffer": b"not json at all"})
    page.click("#import-form button[type=submit]")
    expect(page.locator(".flash li.error")).to_contain_text("The file is not JSON")
    page.goto(f"{embedded_server.base_url}/")
    page.locator("#conversation-list a", has_text="Sourdough starter").click()
    expect(page.locator(".message .bubble")).to_have_count(4)
    expect(page.locator(".message.assistant .bubble").last).to_have_text("Yes: a 1.5 litre jar leaves room to double.")

    page.goto(f"{embedded_server.base_url}/c/{conversation}/")
    page.click("#settings summary")
    page.click("#share-form button")
    expect(page.locator("#shared h1")).to_have_text("Euler")
    expect(page.locator("#shared .message.assistant .katex")).to_have_count(1)  # rendered as in the chat
    link = page.url
    page.click("#revoke-form button")
    expect(page.locator(".flash li.success")).to_contain_text("Revoked")
    assert page.goto(link).status == 404
