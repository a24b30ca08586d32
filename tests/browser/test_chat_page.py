"""A person in Chromium: logs in, picks a model, watches a reply stream in, stops one, reads the library."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in

pytestmark = pytest.mark.browser


def test_it_refuses_a_wrong_password_with_a_readable_message(page, embedded_server):
    page.goto(f"{embedded_server.base_url}/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("didn't match")


def test_it_streams_a_reply_into_the_page_and_keeps_it_after_reload(page, embedded_server):
    log_in(page, embedded_server)
    page.select_option("#model-picker", "tiny")
    page.fill("#prompt", "Hello from the browser")
    page.keyboard.press("Enter")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".stats")).to_contain_text("tokens", timeout=60_000)
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    expect(reply.locator(".stats")).to_contain_text(re.compile(r"tok/s · first token \d+ ms"))
    streamed = page.evaluate("document.querySelector('.message.assistant:last-child')._raw")
    assert streamed.strip()
    page.reload()
    expect(page.locator(".message.user .bubble").last).to_have_text("Hello from the browser")
    # The stored reply is exactly what streamed, the tiny model's stray control characters included.
    assert page.evaluate("document.querySelector('.message.assistant:last-child')._raw") == streamed
    expect(page.locator(".message.assistant .stats").last).to_contain_text(re.compile(r"\d+ tokens · .* tok/s"))


def test_shift_enter_breaks_the_line_instead_of_sending(page, embedded_server):
    log_in(page, embedded_server)
    page.fill("#prompt", "first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    expect(page.locator(".message")).to_have_count(0)


def test_the_stop_button_stops_a_long_reply(page, embedded_server):
    log_in(page, embedded_server)
    page.select_option("#model-picker", "demo")
    page.fill("#prompt", "Write a very long story about a lighthouse.")
    page.click("#send")
    stop = page.locator("#stop")
    expect(stop).to_be_visible()
    expect(page.locator(".message.assistant .bubble").last).not_to_be_empty(timeout=120_000)
    stop.click()
    expect(page.locator(".message.assistant .stats").last).to_contain_text("stopped", timeout=30_000)
    expect(page.locator("#send")).to_be_visible()


def test_the_model_page_says_when_a_model_ships_no_chat_template(page, embedded_server):
    log_in(page, embedded_server)
    page.goto(f"{embedded_server.base_url}/models/")
    expect(page.get_by_role("link", name="demo")).to_be_visible()
    page.get_by_role("link", name="demo").click()
    expect(page.locator("#template-note")).to_contain_text("ships no chat template")
    expect(page.locator("pre.template")).to_contain_text("start_of_turn")
