"""Issue 16, the chat's first ten minutes: what a new user meets on the chat page, with the mouse and with the
keyboard alone. Maya is new to the team; she opens Hearth, chats, scrolls, searches and stops replies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in, wait_for_js
from tests.browser.test_chat_features import stored_conversation

pytestmark = pytest.mark.browser

LAST_REPLY = "document.querySelector('.message.assistant:last-child')"
AXE = Path(__file__).resolve().parents[2] / "static" / "vendor" / "axe-core" / "axe.min.js"
SERIOUS = """axe.run(document, {resultTypes: ['violations']}).then((result) => result.violations
    .filter((v) => ['serious', 'critical'].includes(v.impact))
    .map((v) => `${v.id}: ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`))"""


def connected(page) -> None:
    """The chat socket is open (a message sent before would be refused: "Not connected yet")."""
    wait_for_js(page, "window.hearthChat && window.hearthChat.socket && window.hearthChat.socket.readyState === 1",
                timeout=30)


def contrast(page, selector: str) -> float:
    """The WCAG contrast ratio of an element's text on its own background."""
    return page.locator(selector).evaluate("""(node) => {
        const style = getComputedStyle(node);
        const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = (c) => {
            const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        };
        const [a, b] = [lum(style.color), lum(style.backgroundColor)].sort((x, y) => y - x);
        return (a + 0.05) / (b + 0.05);
    }""")


def test_a_new_chat_shows_up_in_the_sidebar_tab_title_and_settings_without_a_reload(page, embedded_server):
    log_in(page, embedded_server)
    page.click("a.new-chat")
    page.select_option("#model-picker", "tiny")
    page.fill("#prompt", "Plan a picnic for the lighthouse team")
    connected(page)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"), timeout=30_000)
    conversation = page.url.rstrip("/").rsplit("/", 1)[-1]
    current = page.locator("#conversation-list a[aria-current=page]")
    expect(current).to_have_attribute("href", f"/c/{conversation}/")
    expect(current).to_contain_text("Plan a picnic")
    expect(page).to_have_title(re.compile(r"^Plan a picnic.* · Hearth$"))
    page.click("#settings summary")
    expect(page.get_by_role("button", name="Save settings")).to_be_visible()
    expect(page.get_by_role("button", name="Rename")).to_be_visible()
    expect(page.get_by_role("button", name="Delete conversation")).to_be_visible()
    expect(page.locator("#settings")).not_to_contain_text("Applied when you send the first message")
    page.get_by_label("Title").fill("Picnic plans")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator("#conversation-list a[aria-current=page]")).to_have_text("Picnic plans")


def test_the_temperature_box_is_wide_enough_to_show_its_value(page, embedded_server):
    log_in(page, embedded_server)
    page.click("#settings summary")
    box = page.locator("input[name=temperature]")
    box.fill("0.75")
    width = box.evaluate("input => input.clientWidth")
    assert width >= 70, f"the Temperature box is {width}px wide"
    assert box.evaluate("input => input.scrollWidth <= input.clientWidth")


def test_an_error_message_is_red(page, embedded_server):
    log_in(page, embedded_server)
    page.evaluate("""() => { const p = document.getElementById('model-picker');
                              p.add(new Option('gone', 'gone')); p.value = 'gone'; }""")
    page.fill("#prompt", "hello?")
    connected(page)
    page.keyboard.press("Enter")
    status = page.locator("#status")
    expect(status).to_contain_text("Pick a model")
    error = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--error').trim()")
    assert error == "#b91c1c"
    expect(status).to_have_css("color", "rgb(185, 28, 28)")


def test_an_empty_chat_welcomes_maya_with_the_model_and_starter_prompts(page, embedded_server):
    log_in(page, embedded_server)
    page.select_option("#model-picker", "tiny")
    welcome = page.locator("#welcome")
    expect(welcome).to_be_visible()
    expect(welcome.locator("h2")).to_contain_text("tiny")
    starters = welcome.locator("button.starter")
    assert starters.count() >= 3
    starters.first.click()
    assert page.input_value("#prompt") == starters.first.text_content()
    expect(page.locator("#prompt")).to_be_focused()
    connected(page)
    page.keyboard.press("Enter")
    expect(welcome).to_be_hidden()


def test_the_message_box_is_focused_on_load_and_the_skip_link_reaches_it(page, embedded_server):
    log_in(page, embedded_server)
    expect(page.locator("#prompt")).to_be_focused()
    page.goto(f"{embedded_server.base_url}/jobs/")
    page.keyboard.press("Tab")
    skip = page.locator("a.skip-link")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    page.goto(f"{embedded_server.base_url}/")
    skip.focus()  # on the chat page it leads to the message box
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_be_focused()


def test_esc_closes_settings(page, embedded_server):
    log_in(page, embedded_server)
    page.click("#settings summary")
    expect(page.locator("input[name=temperature]")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("input[name=temperature]")).to_be_hidden()
    expect(page.locator("#settings summary")).to_be_focused()


def test_white_on_orange_is_readable_in_dark_mode(page, embedded_server):
    log_in(page, embedded_server)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        ratio = contrast(page, "#send")
        assert ratio >= 4.5, f"Send in {scheme} mode: {ratio:.2f}:1"


def test_search_filters_the_sidebar_without_leaving_the_open_chat(page, embedded_server):
    log_in(page, embedded_server)
    stored_conversation(embedded_server, [("user", "about kites"), ("assistant", "Kites fly.")], title="Kite notes")
    open_chat = stored_conversation(embedded_server, [("user", "hello"), ("assistant", "Hi there.")],
                                    title="Greeting")
    page.goto(f"{embedded_server.base_url}/c/{open_chat}/")
    page.get_by_label("Search conversations").fill("Kite notes")
    page.keyboard.press("Enter")
    expect(page.locator("#conversation-list")).to_contain_text("Kite notes")
    expect(page.locator("#conversation-list")).not_to_contain_text("Greeting")
    expect(page).to_have_url(f"{embedded_server.base_url}/c/{open_chat}/")
    expect(page.locator(".message.assistant .bubble")).to_have_text("Hi there.")


def test_a_reply_says_what_it_waits_for_before_its_first_token(page, embedded_server):
    log_in(page, embedded_server)
    page.evaluate("""() => { window.__stages = [];
        new MutationObserver(() => {
            for (const n of document.querySelectorAll('.queue-note')) {
                if (!window.__stages.includes(n.textContent)) window.__stages.push(n.textContent);
            }
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }""")
    page.select_option("#model-picker", "demo")
    page.fill("#prompt", "Say hello. " + "Some context to read first. " * 150)
    connected(page)
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=180_000)
    stages = page.evaluate("window.__stages")
    assert "Reading the prompt…" in stages, stages
    # The prompt is longer than a chunk (HEARTH_PREFILL_CHUNK_TOKENS): how much of it is read shows as it goes.
    assert any(re.fullmatch(r"Reading the prompt… \d+% \([\d,]+ of [\d,]+ tokens\)", s) for s in stages), stages
    assert any(s.startswith(("Queued", "Loading the model", "Waiting for the model")) for s in stages), stages
    expect(page.locator(".queue-note")).to_have_count(0)


def test_maya_scrolls_up_during_a_reply_and_stays_there_with_a_jump_to_latest_button(page, embedded_server):
    log_in(page, embedded_server)
    history = [("user" if i % 2 == 0 else "assistant", f"earlier line {i}\n" * 3) for i in range(40)]
    conversation = stored_conversation(embedded_server, history, title="Scrolling")
    page.goto(f"{embedded_server.base_url}/c/{conversation}/")
    page.select_option("#model-picker", "demo")
    page.fill("#prompt", "Write a very long story about a lighthouse.")
    connected(page)
    page.keyboard.press("Enter")
    wait_for_js(page, f"({LAST_REPLY}._raw || '').length > 5", timeout=120)
    messages = page.locator("#messages")
    messages.evaluate("list => list.scrollTo(0, 0)")
    jump = page.locator("#jump-latest")
    expect(jump).to_be_visible(timeout=10_000)
    # Enter during the stream is not silently ignored: Maya is told, and her text stays in the box.
    page.fill("#prompt", "and then?")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("still streaming")
    assert page.input_value("#prompt") == "and then?"
    length = page.evaluate(f"({LAST_REPLY}._raw || '').length")
    wait_for_js(page, f"({LAST_REPLY}._raw || '').length > {length + 10} || {LAST_REPLY}.dataset.finished === '1'",
                timeout=60)
    page.wait_for_timeout(1500)
    assert messages.evaluate("list => list.scrollTop") < 50, "the page pulled Maya back to the bottom"
    jump.click()
    expect(jump).to_be_hidden()
    assert messages.evaluate("list => list.scrollHeight - list.scrollTop - list.clientHeight < 60")
    # Esc stops the reply, and the focus stays in the message box.
    page.locator("#prompt").focus()
    page.keyboard.press("Escape")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("stopped", timeout=30_000)
    expect(page.locator("#prompt")).to_be_focused()


def test_focus_returns_to_the_message_box_after_stop(page, embedded_server):
    log_in(page, embedded_server)
    page.select_option("#model-picker", "demo")
    page.fill("#prompt", "Write a very long story about a lighthouse.")
    connected(page)
    page.keyboard.press("Enter")
    wait_for_js(page, f"({LAST_REPLY}._raw || '').length > 5", timeout=120)
    page.click("#stop")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("stopped", timeout=30_000)
    expect(page.locator("#prompt")).to_be_focused()


# ---- the library and API keys pages ----

def test_a_refused_upload_shows_no_full_progress_bar_above_its_message(page, embedded_server, tmp_path):
    junk = tmp_path / "not-a-model.gguf"
    junk.write_bytes(b"this is not a GGUF file " * 4096)
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/")
    page.set_input_files("#upload-file", str(junk))
    page.fill("#upload-name", "junk-upload")
    page.click("#upload-start")
    expect(page.locator("#upload-status")).to_contain_text("Upload refused", timeout=30_000)
    expect(page.locator("#upload-progress")).to_be_hidden()


def test_an_unfinished_upload_can_be_discarded_and_goes_once_the_model_is_imported(page, embedded_server,
                                                                                   tiny_gguf):
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/")
    for name in ("discard-me", "imported-since"):
        page.evaluate("window.hearthUpload.chunkSize = 64 * 1024; window.hearthUpload.stopAfter = 1")
        page.set_input_files("#upload-file", str(tiny_gguf))
        page.fill("#upload-name", name)
        page.click("#upload-start")
        expect(page.locator("#upload-status")).to_contain_text("Paused at", timeout=30_000)
        page.evaluate("localStorage.clear()")  # the next one is a new upload, not a resumed one
    page.reload()
    entries = page.locator("#unfinished-uploads li")
    expect(entries.filter(has_text="discard-me")).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    entries.filter(has_text="discard-me").get_by_role("button", name="Discard").click()
    expect(entries.filter(has_text="discard-me")).to_have_count(0)
    page.reload()
    expect(entries.filter(has_text="discard-me")).to_have_count(0)
    expect(entries.filter(has_text="imported-since")).to_have_count(1)
    embedded_server.manage("import_model", str(tiny_gguf), "--name", "imported-since")
    page.reload()
    expect(page.get_by_role("link", name="imported-since")).to_be_visible()
    expect(page.locator("#unfinished-uploads")).to_have_count(0)


def test_a_new_api_key_has_a_copy_button_and_revoke_asks_first(browser, embedded_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=embedded_server.base_url)
    page = context.new_page()
    try:
        log_in(page, embedded_server)
        page.goto(f"{embedded_server.base_url}/keys/")
        page.get_by_label("Name").fill("maya's editor")
        page.get_by_role("button", name="Create a key").click()
        key = page.locator("#new-key").text_content().strip()
        page.get_by_role("button", name="Copy the new key").click()
        expect(page.locator("#copy-key")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == key
        row = page.locator("#api-keys tr", has_text="maya's editor")
        questions = []
        page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
        row.get_by_role("button", name="Revoke").click()
        page.wait_for_timeout(300)
        assert questions and "maya's editor" in questions[0]
        expect(row.locator(".status")).to_have_text("active")
        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_role("button", name="Revoke").click()
        expect(page.locator("#api-keys tr", has_text="maya's editor").locator(".status")).to_contain_text("revoked")
    finally:
        context.close()


def test_conversion_options_read_as_words_not_python_dicts(page, embedded_server):
    embedded_server.manage("shell", "-c", (
        "from inference.models import LocalModel, ModelConversion; s = LocalModel.objects.get(name='hf-tiny'); "
        "ModelConversion.objects.create(source=s, target='mlx', options={'bits': None}, result_name='hf-tiny-mlx', "
        "status='failed', error_text='stopped'); "
        "ModelConversion.objects.create(source=s, target='gguf', options={'type': 'q8_0'}, result_name='hf-tiny-q8', "
        "status='failed', error_text='stopped')"))
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/hf-tiny/")
    table = page.locator("#conversions")
    expect(table).to_contain_text("MLX (keep dtype)")
    expect(table).to_contain_text("Q8_0")
    expect(table).not_to_contain_text("{")


def test_on_a_phone_the_sidebar_is_a_drawer_and_messages_get_the_screen(browser, embedded_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        log_in(page, embedded_server)
        history = [("user" if i % 2 == 0 else "assistant", f"phone line {i}") for i in range(20)]
        conversation = stored_conversation(embedded_server, history, title="On the phone")
        page.goto(f"{embedded_server.base_url}/c/{conversation}/")
        height = page.locator("#messages").evaluate("list => list.clientHeight")
        assert height >= 560, f"messages get {height} of 844 px"
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
        sidebar = page.locator("#sidebar")
        expect(sidebar).not_to_be_in_viewport()
        toggle = page.get_by_role("button", name="Conversations")
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(sidebar.get_by_role("link", name="On the phone")).to_be_in_viewport()
        expect(sidebar.get_by_role("link", name="On the phone")).to_be_focused()
        page.keyboard.press("Escape")
        expect(sidebar).not_to_be_in_viewport()
        expect(toggle).to_be_focused()
        toggle.click()
        page.locator(".drawer-backdrop").click(position={"x": 370, "y": 400})
        expect(sidebar).not_to_be_in_viewport()
        expect(page.locator("#prompt")).to_be_in_viewport(ratio=1)
    finally:
        context.close()


def test_on_a_phone_revoke_and_delete_are_in_reach_without_scrolling_sideways(browser, embedded_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    right_edge = "node => node.getBoundingClientRect().right"
    try:
        log_in(page, embedded_server)
        page.goto(f"{embedded_server.base_url}/keys/")
        page.get_by_label("Name").fill("phone key")
        page.get_by_role("button", name="Create a key").click()
        row = page.locator("#api-keys tr", has_text="phone key")
        revoke = row.get_by_role("button", name="Revoke")
        assert revoke.evaluate(right_edge) <= 390
        expect(row.locator("td").nth(1)).to_have_attribute("data-label", "Name")
        page.goto(f"{embedded_server.base_url}/models/")
        delete = page.locator("#model-table button.danger, #model-table form.delete-model button").first
        assert delete.evaluate(right_edge) <= 390
        assert page.locator(".page").evaluate("node => node.scrollWidth - node.clientWidth") <= 1
    finally:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_page_has_a_serious_accessibility_violation(page, embedded_server, scheme):
    """axe-core (vendored, injected by the test: no page loads it) on every page, in both colour schemes."""
    axe = AXE.read_text()
    conversation = stored_conversation(embedded_server, [("user", "a **question**"), ("assistant", "An `answer`.")],
                                       title="Checked by axe")
    page.emulate_media(color_scheme=scheme)
    page.goto(f"{embedded_server.base_url}/login/")
    page.evaluate(axe)
    found = {"/login/": page.evaluate(SERIOUS)}
    log_in(page, embedded_server)
    for path in ["/", f"/c/{conversation}/", "/models/", "/models/tiny/", "/jobs/", "/keys/", "/playground/",
                 "/users/", "/conversations/import/"]:
        page.goto(f"{embedded_server.base_url}{path}")
        page.evaluate(axe)
        found[path] = page.evaluate(SERIOUS)
        if path.startswith("/c/"):
            page.click("#settings summary")  # the open Settings panel, too
            found[f"{path} settings"] = page.evaluate(SERIOUS)
    assert not any(found.values()), {path: v for path, v in found.items() if v}
