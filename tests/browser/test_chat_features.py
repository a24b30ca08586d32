"""Chat features in Chromium: sanitized markdown with highlighted, copyable code; versions; older messages on
scroll; a dropped websocket resumed with no gap and no duplicate; a reload while a reply streams."""

from __future__ import annotations

import re
import sqlite3

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, log_in, wait_for_js

pytestmark = pytest.mark.browser

HOSTILE_REPLY = """Here is code:

```python
def add(a, b):
    return a + b
```

<script>window.__pwned = 'script'</script>
<img src="x" onerror="window.__pwned = 'onerror'">
<a href="javascript:window.__pwned='link'">click</a>

**bold** text
"""


def stored_conversation(server, messages: list[tuple[str, str]], title: str = "Stored") -> int:
    """A conversation written straight to the database, as if a model had replied with `messages`."""
    code = (
        "from django.contrib.auth import get_user_model; from webui.models import Conversation, Message; "
        f"c = Conversation.objects.create(owner=get_user_model().objects.get(username='admin'), title={title!r}); "
        "p = None\n"
        f"for role, text in {messages!r}:\n"
        "    p = Message.objects.create(conversation=c, parent=p, role=role, content=text)\n"
        "c.leaf = p; c.save(); print(c.pk)"
    )
    return int(server.manage("shell", "-c", code).stdout.strip().splitlines()[-1])


def db(server, sql: str, *params):
    with sqlite3.connect(server.data_dir / "hearth.sqlite3", timeout=30) as connection:
        return connection.execute(sql, params).fetchall()


def test_a_hostile_reply_renders_as_inert_markdown_with_highlighted_copyable_code(browser, embedded_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=embedded_server.base_url)
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        log_in(page, embedded_server)
        conversation = stored_conversation(embedded_server, [("user", "show me"), ("assistant", HOSTILE_REPLY)])
        page.goto(f"{embedded_server.base_url}/c/{conversation}/")
        reply = page.locator(".message.assistant .bubble").last
        expect(reply.locator("strong")).to_have_text("bold")
        expect(reply.locator("pre code.hljs")).to_contain_text("def add(a, b):")
        expect(reply.locator("pre code .hljs-keyword").first).to_have_text("def")
        reply.locator("a").click()  # a javascript: link must do nothing either
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None
        assert reply.locator("script").count() == 0
        assert reply.locator("[onerror]").count() == 0
        assert not dialogs
        reply.locator("button.copy-code").click()
        expect(reply.locator("button.copy-code")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b\n"
    finally:
        context.close()


def test_regenerate_keeps_both_versions_navigable_as_2_of_2(page, embedded_server):
    log_in(page, embedded_server)
    page.select_option("#model-picker", "tiny")
    page.fill("#prompt", "Say something")
    page.keyboard.press("Enter")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".stats")).to_contain_text("tokens", timeout=60_000)
    first_text = page.evaluate("document.querySelector('.message.assistant:last-child')._raw")
    reply.get_by_role("button", name="Regenerate reply").click()
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(page.locator(".message.assistant .versions .count")).to_have_text("2/2", timeout=30_000)
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=60_000)
    page.get_by_role("button", name="Previous version").click()
    expect(page.locator(".message.assistant .versions .count")).to_have_text("1/2")
    # The page was reloaded; the tiny model's stray control characters (\r, NUL) come back exactly as streamed.
    assert page.evaluate("document.querySelector('.message.assistant')._raw") == first_text
    page.get_by_role("button", name="Next version").click()
    expect(page.locator(".message.assistant .versions .count")).to_have_text("2/2")


def test_edit_and_resend_adds_a_version_of_the_question(page, embedded_server):
    log_in(page, embedded_server)
    page.select_option("#model-picker", "tiny")
    page.fill("#prompt", "Original question")
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=60_000)
    page.get_by_role("button", name="Edit message").click()
    page.get_by_label("Edited message").fill("Better question")
    page.keyboard.press("Enter")
    expect(page.locator(".message.user .bubble")).to_have_text("Better question")
    expect(page.locator(".message.user .versions .count")).to_have_text("2/2", timeout=30_000)
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=60_000)
    page.reload()
    expect(page.locator(".message.user .bubble")).to_have_text("Better question")
    page.get_by_role("button", name="Previous version").click()
    expect(page.locator(".message.user .bubble")).to_have_text("Original question")


def test_older_messages_load_when_the_reader_scrolls_up(page, embedded_server):
    log_in(page, embedded_server)
    history = [("user" if i % 2 == 0 else "assistant", f"line {i}") for i in range(130)]
    conversation = stored_conversation(embedded_server, history, title="Long history")
    page.goto(f"{embedded_server.base_url}/c/{conversation}/")
    expect(page.locator(".message")).to_have_count(50)
    page.locator("#messages").evaluate("list => list.scrollTo(0, 0)")
    expect(page.locator(".message")).to_have_count(100)
    page.locator("#messages").evaluate("list => list.scrollTo(0, 0)")
    expect(page.locator(".message")).to_have_count(130)
    expect(page.locator("#load-older")).to_have_count(0)
    expect(page.locator(".message .bubble").first).to_have_text("line 0")


def start_long_reply(page, server, text: str):
    log_in(page, server)
    page.select_option("#model-picker", "demo")
    page.fill("#prompt", text)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"), timeout=30_000)
    wait_for_js(page, "(document.querySelector('.message.assistant:last-child')._raw || '').length > 5",
                timeout=120)


def test_a_dropped_websocket_resumes_the_reply_with_no_gap_and_no_duplicate(page, embedded_server):
    start_long_reply(page, embedded_server, "Write a long story about a lighthouse keeper.")
    page.evaluate("window.hearthChat.socket.close()")  # the connection drops mid-reply
    expect(page.locator("#status")).to_have_text(re.compile("Connection lost|Reconnected"))
    expect(page.locator("#status")).to_have_text("Reconnected.", timeout=15_000)
    length = page.evaluate("document.querySelector('.message.assistant:last-child')._raw.length")
    wait_for_js(page, f"document.querySelector('.message.assistant:last-child')._raw.length > {length + 5}")
    page.click("#stop")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("stopped", timeout=30_000)
    shown = page.evaluate("document.querySelector('.message.assistant:last-child')._raw")
    job = page.locator(".message.assistant").last.get_attribute("data-job")
    stored = db(embedded_server, "SELECT output_text FROM inference_generationjob WHERE id = ?",
                job.replace("-", ""))[0][0]
    assert shown == stored


def test_a_reload_during_generation_shows_the_reply_still_streaming(page, embedded_server):
    start_long_reply(page, embedded_server, "Write a long poem about the sea.")
    page.reload()
    expect(page.locator("#stop")).to_be_visible()
    wait_for_js(page, "(document.querySelector('.message.assistant:last-child')._raw || '').length > 20")
    page.click("#stop")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("stopped", timeout=30_000)
    shown = page.evaluate("document.querySelector('.message.assistant:last-child')._raw")
    job = page.locator(".message.assistant").last.get_attribute("data-job")
    stored = db(embedded_server, "SELECT output_text FROM inference_generationjob WHERE id = ?",
                job.replace("-", ""))[0][0]
    assert shown == stored


def test_the_playground_streams_a_completion_of_a_raw_prompt(page, embedded_server):
    log_in(page, embedded_server)
    page.get_by_role("link", name="Playground").click()
    page.select_option("#pg-model", "tiny")
    page.fill("#pg-max-tokens", "6")
    page.click("#pg-run")
    expect(page.locator("#pg-stats")).to_contain_text("tokens", timeout=60_000)
    expect(page.locator("#completion .prompt-echo")).to_have_text("Once upon a time")
    assert page.locator("#completion .output").inner_text().strip()


SHOWCASE_REPLY = """Here is a function that reverses the words of a sentence:

```python
def reverse_words(sentence: str) -> str:
    \"\"\"Return the words of `sentence` in reverse order.\"\"\"
    return " ".join(reversed(sentence.split()))
```

- `split()` breaks the sentence at whitespace
- `reversed()` walks the list backwards
- `" ".join()` glues the words back together

| Input | Output |
|-------|--------|
| `hello brave world` | `world brave hello` |
"""


def test_the_chat_screenshot_shows_a_highlighted_reply(page, embedded_server):
    log_in(page, embedded_server)
    conversation = stored_conversation(
        embedded_server, [("user", "How do I reverse the words of a sentence in Python?"),
                          ("assistant", SHOWCASE_REPLY)], title="Reverse words in Python")
    page.goto(f"{embedded_server.base_url}/c/{conversation}/")
    expect(page.locator(".message.assistant pre code.hljs")).to_contain_text("def reverse_words")
    expect(page.locator(".message.assistant table")).to_contain_text("world brave hello")
    page.select_option("#model-picker", "demo")
    page.locator("#settings summary").click()
    page.get_by_label("Max tokens").fill("48")
    page.locator("#settings summary").click()
    page.fill("#prompt", "Thanks! Can you explain what a Python list is in one sentence?")
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("tok/s", timeout=120_000)
    tokens = int(page.locator(".message.assistant .stats").last.inner_text().split()[0])
    assert tokens <= 48  # the conversation's max tokens, from the settings panel
    page.locator("#prompt").blur()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat.png"))


def test_a_300_message_chat_opens_in_under_300_ms(page, embedded_server):
    """The page renders the latest 50 messages as HTML (older ones come as the reader scrolls up) and the
    markdown of those once: the load stays flat however long the chat. The figure is the browser's own timing
    (navigation start to the load event and to the last reply rendered), the best of three loads."""
    log_in(page, embedded_server)
    reply = "A reply with **bold** text, a list:\n\n- one\n- two\n\nand `code`, then a longer sentence to wrap. " * 3
    history = [("user", f"question {i}") if i % 2 == 0 else ("assistant", reply) for i in range(300)]
    conversation = stored_conversation(embedded_server, history, title="Three hundred")
    timings = []
    for _ in range(3):
        page.goto(f"{embedded_server.base_url}/c/{conversation}/")
        expect(page.locator(".message.assistant .bubble li").last).to_have_text("two")
        timings.append(page.evaluate("""() => {
            const nav = performance.getEntriesByType("navigation")[0];
            return {load: nav.loadEventEnd, rendered: performance.now()}; }"""))
    best = min(timing["load"] for timing in timings)
    print(f"300-message chat: load event {[round(t['load']) for t in timings]} ms, "
          f"rendered {[round(t['rendered']) for t in timings]} ms")
    assert best < 300, timings
