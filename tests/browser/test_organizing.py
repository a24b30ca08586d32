"""Issue 16, organizing the chat in Chromium: Priya keeps a lot of chats. She pins one, files others in folders
(by the ⋯ menu with the keyboard alone, and by dragging), tags and filters them, archives one and brings it back,
and has one reply answered again by another model, which the reply names."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in, wait_for_js
from tests.browser.test_chat_features import stored_conversation
from tests.browser.test_chat_polish import AXE, SERIOUS

pytestmark = pytest.mark.browser


def unique(word: str) -> str:
    return f"{word} {uuid.uuid4().hex[:6]}"


def row(page, title: str):
    return page.locator("#conversation-list .conv", has_text=title)


def open_menu_by_keyboard(page, title: str) -> None:
    button = page.get_by_role("button", name=f"Options for {title}", exact=True)
    button.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("menu", name=f"Options for {title}")).to_be_visible()
    expect(button).to_have_attribute("aria-expanded", "true")


def choose_by_keyboard(page, item: str) -> None:
    """Arrow down the open menu to `item` and press Enter."""
    for _ in range(20):
        focused = page.evaluate("document.activeElement.textContent")
        if focused == item:
            page.keyboard.press("Enter")
            return
        page.keyboard.press("ArrowDown")
    raise AssertionError(f"no menu item {item!r}")


def new_folder(page, name: str) -> None:
    page.locator("#new-folder summary").click()
    page.get_by_label("Folder name").fill(name)
    page.get_by_role("button", name="Create folder").click()
    expect(page.locator(f'#conversation-list .folder[data-name="{name}"]')).to_be_visible()


def test_pinning_by_the_keyboard_puts_a_chat_first_under_pinned_and_survives_a_reload(page, embedded_server):
    log_in(page, embedded_server)
    title = unique("Pin me")
    stored_conversation(embedded_server, [("user", "hi"), ("assistant", "hello")], title=title)
    stored_conversation(embedded_server, [("user", "hi"), ("assistant", "hello")], title=unique("Newer"))
    page.reload()
    open_menu_by_keyboard(page, title)
    expect(page.get_by_role("menuitem", name="Pin", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    pinned = page.locator("#conversation-list .pinned-list")
    expect(pinned.locator(".conv", has_text=title)).to_be_visible()
    expect(page.get_by_role("button", name=f"Options for {title}", exact=True)).to_be_focused()
    page.reload()
    expect(pinned.locator(".conv").first).to_contain_text(title)
    open_menu_by_keyboard(page, title)
    page.keyboard.press("Escape")  # Esc closes the menu, the focus goes back to its button
    expect(page.get_by_role("menu")).to_be_hidden()
    expect(page.get_by_role("button", name=f"Options for {title}", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    choose_by_keyboard(page, "Unpin")
    expect(pinned.locator(".conv", has_text=title)).to_have_count(0)


def test_a_folder_takes_one_chat_by_the_menu_and_another_by_drag_folds_and_goes_without_them(page, embedded_server):
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, embedded_server)
    by_menu, by_drag = unique("Menu moved"), unique("Dragged")
    for title in (by_menu, by_drag):
        stored_conversation(embedded_server, [("user", "hi"), ("assistant", "hello")], title=title)
    page.reload()
    folder_name = unique("Work")
    new_folder(page, folder_name)
    folder = page.locator(f'#conversation-list .folder[data-name="{folder_name}"]')

    open_menu_by_keyboard(page, by_menu)
    choose_by_keyboard(page, f"Move to “{folder_name}”")
    expect(folder.locator(".conv", has_text=by_menu)).to_be_visible()

    row(page, by_drag).locator("a").drag_to(folder.locator(".folder-head"))
    expect(folder.locator(".conv", has_text=by_drag)).to_be_visible()
    expect(folder.locator(".folder-toggle .count")).to_have_text("2")

    page.reload()  # server-rendered: still there
    toggle = folder.get_by_role("button", name=f"{folder_name} 2", exact=True)  # its name, how many it holds
    expect(toggle).to_have_attribute("aria-expanded", "true")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(folder.locator(".conv", has_text=by_menu)).to_be_hidden()
    page.reload()  # folded stays folded in this browser
    expect(folder.locator(".conv", has_text=by_menu)).to_be_hidden()
    toggle.click()

    # Dragged back onto "Chats", out of the folder.
    # Onto its heading: the list below may be taller than the screen (its middle out of sight) in a long run.
    row(page, by_drag).locator("a").drag_to(page.locator("#conversation-list .loose"), target_position={"x": 20, "y": 8})
    expect(page.locator("#conversation-list .loose .conv", has_text=by_drag)).to_be_visible()

    page.get_by_role("button", name=f"Options for folder {folder_name}").click()
    page.get_by_role("menuitem", name="Rename…").click()
    renamed = unique("Archive of work")
    page.get_by_label("Folder name").last.fill(renamed)
    page.get_by_role("button", name="Rename", exact=True).click()
    folder = page.locator(f'#conversation-list .folder[data-name="{renamed}"]')
    expect(folder).to_be_visible()
    page.get_by_role("button", name=f"Options for folder {renamed}").click()
    page.get_by_role("menuitem", name="Delete folder").click()
    expect(folder).to_have_count(0)
    expect(page.locator("#conversation-list .loose .conv", has_text=by_menu)).to_be_visible()  # kept


def test_tags_are_added_in_a_dialog_and_filter_the_sidebar_and_the_search_finds_them(page, embedded_server):
    log_in(page, embedded_server)
    tagged, other = unique("Soup recipes"), unique("Car repairs")
    for title in (tagged, other):
        stored_conversation(embedded_server, [("user", "hi"), ("assistant", "hello")], title=title)
    tag = f"cooking{uuid.uuid4().hex[:4]}"
    page.reload()
    open_menu_by_keyboard(page, tagged)
    choose_by_keyboard(page, "Tags…")
    dialog = page.get_by_role("dialog", name=f"Tags of “{tagged}”")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("New tag")).to_be_focused()
    page.keyboard.type(tag)
    page.keyboard.press("Enter")
    expect(dialog.get_by_role("button", name=f"Remove the tag {tag}")).to_be_visible()
    page.keyboard.type("soups")
    page.keyboard.press("Enter")
    expect(dialog.get_by_role("button", name="Remove the tag soups")).to_be_visible()
    dialog.get_by_role("button", name="Remove the tag soups").click()
    expect(dialog.get_by_role("button", name="Remove the tag soups")).to_have_count(0)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name=f"Options for {tagged}", exact=True)).to_be_focused()
    expect(row(page, tagged).locator(".conv-tags")).to_have_text(tag)

    page.locator("#conversation-list .tag-filter").get_by_role("link", name=tag).click()
    expect(page.locator("#conversation-list .filter-note")).to_contain_text(tag)
    expect(row(page, tagged)).to_be_visible()
    expect(row(page, other)).to_have_count(0)
    page.get_by_role("link", name="Show all").click()
    expect(row(page, other)).to_be_visible()

    page.get_by_label("Search conversations").fill(tag[:-2])
    page.keyboard.press("Enter")
    expect(row(page, tagged)).to_be_visible()
    expect(row(page, other)).to_have_count(0)


def test_an_archived_chat_leaves_the_sidebar_and_comes_back_from_the_archived_page(page, embedded_server):
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, embedded_server)
    kept, dropped = unique("Old holiday"), unique("Old receipts")
    for title in (kept, dropped):
        stored_conversation(embedded_server, [("user", "hi"), ("assistant", "hello")], title=title)
    page.reload()
    for title in (kept, dropped):
        open_menu_by_keyboard(page, title)
        choose_by_keyboard(page, "Archive")
        expect(row(page, title)).to_have_count(0)
    page.locator("#archived-link").click()
    expect(page).to_have_url(re.compile(r"/archived/$"))
    table = page.locator("#archived-table")
    table.get_by_role("link", name=kept).click()  # it opens
    expect(page.locator("#archived-note")).to_contain_text("archived")
    expect(page.locator(".message.assistant .bubble")).to_have_text("hello")
    page.go_back()
    table.get_by_role("button", name=f"Delete {dropped}").click()
    expect(page.locator(".flash")).to_contain_text(f"Deleted “{dropped}”")
    expect(table.get_by_role("link", name=dropped)).to_have_count(0)
    table.get_by_role("button", name=f"Unarchive {kept}").click()
    expect(table.get_by_role("link", name=kept)).to_have_count(0)
    page.goto(f"{embedded_server.base_url}/")
    expect(row(page, kept)).to_be_visible()
    expect(row(page, dropped)).to_have_count(0)


def test_a_reply_answered_again_by_another_model_names_it_and_the_chat_keeps_its_model(page, embedded_server):
    log_in(page, embedded_server)
    page.select_option("#model-picker", "tiny")
    page.click("#settings summary")
    page.fill("#settings-form input[name=max_tokens]", "8")  # short replies, from either model
    page.click("#settings summary")
    page.fill("#prompt", "Name a fruit")
    wait_for_js(page, "window.hearthChat && window.hearthChat.socket && window.hearthChat.socket.readyState === 1")
    page.keyboard.press("Enter")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".stats")).to_contain_text("tokens", timeout=60_000)
    expect(reply.locator(".model-name")).to_have_text("tiny")
    answer_with = reply.get_by_role("button", name="Answer with another model")
    answer_with.focus()
    page.keyboard.press("Enter")
    menu = page.get_by_role("menu", name="Answer with another model")
    expect(menu.get_by_role("menuitem", name="Answer with tiny")).to_have_count(0)  # its own model is no "other"
    choose_by_keyboard(page, "Answer with demo")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".model-name")).to_have_text("demo", timeout=30_000)
    expect(reply.locator(".versions .count")).to_have_text("2/2")
    expect(reply.locator(".stats")).to_contain_text("tokens", timeout=120_000)
    expect(page.locator("#model-picker")).to_have_value("tiny")
    page.reload()
    expect(page.locator(".message.assistant .model-name")).to_have_text("demo")
    expect(page.locator("#model-picker")).to_have_value("tiny")  # the chat's own model is still its default
    page.get_by_role("button", name="Previous version").click()
    expect(page.locator(".message.assistant .model-name")).to_have_text("tiny")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_organized_sidebar_menus_and_dialog_have_no_serious_accessibility_violation(page, embedded_server, scheme):
    page.emulate_media(color_scheme=scheme)
    log_in(page, embedded_server)
    title = unique("Axe checked")
    conversation = stored_conversation(embedded_server, [("user", "hi"), ("assistant", "hello")], title=title)
    page.goto(f"{embedded_server.base_url}/c/{conversation}/")
    new_folder(page, unique("Axe folder"))
    open_menu_by_keyboard(page, title)
    choose_by_keyboard(page, "Pin")
    expect(page.locator("#conversation-list .pinned-list .conv", has_text=title)).to_be_visible()
    expect(page.get_by_role("button", name=f"Options for {title}", exact=True)).to_be_focused()
    open_menu_by_keyboard(page, title)
    choose_by_keyboard(page, "Tags…")
    page.keyboard.type("axe")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Remove the tag axe")).to_be_visible()
    axe = AXE.read_text()
    page.evaluate(axe)
    found = {"dialog": page.evaluate(SERIOUS)}
    page.keyboard.press("Escape")
    open_menu_by_keyboard(page, title)
    found["menu"] = page.evaluate(SERIOUS)
    page.keyboard.press("Escape")
    page.locator(".message.assistant").get_by_role("button", name="Answer with another model").click()
    found["reply menu"] = page.evaluate(SERIOUS)
    page.goto(f"{embedded_server.base_url}/archived/")
    page.evaluate(axe)
    found["archived"] = page.evaluate(SERIOUS)
    assert not any(found.values()), {where: v for where, v in found.items() if v}
