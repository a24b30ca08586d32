"""Replies with math, diagrams, blockquotes and tables (static/hearth/rich.js, rich.css): KaTeX and Mermaid are
vendored and loaded only for a reply that needs them, and a hostile formula or diagram stays inert."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in
from tests.browser.test_chat_features import stored_conversation
from tests.browser.test_content_security_policy import COLLECT_VIOLATIONS

pytestmark = pytest.mark.browser

MATH_REPLY = r"""Inline: $a\,b^2$ and \(\frac{1}{2}\), a price of $5 and $6, and code `$x$` untouched.

$$\sum_{i=1}^{n} i = \frac{n(n+1)}{2}$$

\[ \int_0^1 x\,dx \]

> A quoted line
> with **bold** in it.

| Name | Value |
|------|-------|
| pipe | $|x|$ |
| two  | 2     |
"""

DIAGRAM_REPLY = """A diagram:

```mermaid
graph TD
  A[Start] --> B{Ready?}
  B -->|yes| C[Go]
```
"""

HOSTILE = r"""Math: $\href{javascript:window.__pwned='href'}{click}$ and $\url{javascript:alert(1)}$ and
$<img src=x onerror="window.__pwned='tex'">$ and $$\htmlData{onload=alert(1)}{x}$$

```mermaid
%%{init: {"securityLevel": "loose", "startOnLoad": true}}%%
graph TD
  A["<img src=x onerror=window.__pwned='label'>"] --> B["<script>window.__pwned='script'</script>"]
  click A call alert("clicked")
  click B href "javascript:window.__pwned='click'"
```
"""


def open_reply(page, server, text: str):
    conversation = stored_conversation(server, [("user", "show me"), ("assistant", text)])
    page.goto(f"{server.base_url}/c/{conversation}/")
    return page.locator(".message.assistant .bubble").last


def test_it_renders_math_in_every_delimiter_with_escapes_intact_and_styles_quotes_and_tables(page, embedded_server):
    log_in(page, embedded_server)
    reply = open_reply(page, embedded_server, MATH_REPLY)
    expect(reply.locator(".katex")).to_have_count(5)
    expect(reply.locator(".math-display .katex-display")).to_have_count(2)
    assert reply.locator(".katex-error").count() == 0
    # The TeX that KaTeX saw is the TeX that was written: `\,` and `\frac` survived the markdown step.
    annotations = reply.locator("annotation").all_text_contents()
    assert r"a\,b^2" in annotations and r"\frac{1}{2}" in annotations and "|x|" in annotations
    assert "$5 and $6" in reply.inner_text()  # prices are not math
    expect(reply.locator("code").filter(has_text="$x$")).to_have_count(1)
    quote = reply.locator("blockquote")
    assert quote.evaluate("e => parseFloat(getComputedStyle(e).borderLeftWidth)") >= 3
    table = reply.locator("table")
    expect(table.locator("tbody tr")).to_have_count(2)
    header = table.locator("th").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert header not in ("rgba(0, 0, 0, 0)", "transparent")


def test_a_reply_without_math_or_diagrams_loads_neither_library_and_the_page_stays_under_300_kb(
    page, embedded_server
):
    log_in(page, embedded_server)
    requested, sizes = [], {}
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: sizes.__setitem__(response.url, len(response.body()))
            if response.request.resource_type in ("script", "stylesheet") else None)
    reply = open_reply(page, embedded_server, "Plain **text**, a price of $5, and `code`.")
    expect(reply.locator("strong")).to_have_text("text")
    page.wait_for_timeout(300)
    assert not [url for url in requested if "/vendor/katex/" in url or "/vendor/mermaid/" in url]
    total = sum(sizes.values())
    assert 100_000 < total < 300_000, sizes  # the chat page's own scripts and styles, before compression


def test_a_mermaid_block_becomes_a_diagram_drawn_in_a_sandboxed_frame_with_its_source_kept(page, embedded_server):
    page.add_init_script(COLLECT_VIOLATIONS)
    log_in(page, embedded_server)
    reply = open_reply(page, embedded_server, DIAGRAM_REPLY)
    image = reply.locator("figure.diagram img")
    expect(image).to_have_count(1, timeout=30_000)
    assert image.get_attribute("src").startswith("data:image/svg+xml")
    assert image.evaluate("e => e.complete && e.naturalWidth > 50 && e.naturalHeight > 50")
    assert "Start" in image.evaluate("e => decodeURIComponent(e.src)")
    expect(reply.locator("figure.diagram details pre code")).to_contain_text("A[Start] --> B{Ready?}")
    # Mermaid ran in a frame of its own: sandboxed (an opaque origin, no cookies), never in the page.
    frame = page.locator("iframe.diagram-frame")
    assert frame.get_attribute("sandbox") == "allow-scripts"
    assert page.evaluate("typeof window.mermaid") == "undefined"
    assert page.evaluate("window.__violations") == []  # the page's policy is untouched by the diagram
    policy = page.request.get(f"{embedded_server.base_url}/diagram-frame/").headers["content-security-policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'self'" in policy  # still no inline script


def test_a_hostile_formula_or_diagram_runs_nothing(browser, embedded_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        log_in(page, embedded_server)
        reply = open_reply(page, embedded_server, HOSTILE)
        expect(reply.locator(".katex").first).to_be_visible()
        reply.locator("figure.diagram img, pre code.language-mermaid").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # let Mermaid finish whatever it would do
        for link in reply.locator("a").all():
            link.click()
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None
        assert not dialogs
        assert reply.locator("script, iframe, object, embed, foreignObject, [onerror], [onload]").count() == 0
        assert reply.locator("a[href^='javascript']").count() == 0
        assert page.locator("body > script:not([src])").count() == 0
        diagram = reply.locator("figure.diagram img")
        if diagram.count():  # shown only as an image: nothing inside it can run or be clicked
            assert diagram.evaluate("e => e.tagName") == "IMG"
        assert page.locator("iframe.diagram-frame").get_attribute("sandbox") == "allow-scripts"
    finally:
        context.close()
