// Markdown for replies: marked parses, DOMPurify sanitizes (no script, no event handlers, no javascript:
// links), highlight.js colours code blocks, and every code block gets a Copy button.
(() => {
  "use strict";
  if (window.hljs) window.hljs.configure({ignoreUnescapedHTML: true});

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }

  // "Copied" for a moment: an icon button shows a check mark and says it to screen readers; a text button says it.
  function flashCopied(button) {
    const use = button.querySelector("svg use");
    if (use) {
      const icon = use.getAttribute("href"), label = button.getAttribute("aria-label");
      use.setAttribute("href", "#i-check");
      button.setAttribute("aria-label", "Copied");
      setTimeout(() => { use.setAttribute("href", icon); button.setAttribute("aria-label", label); }, 1200);
      return;
    }
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1200);
  }

  function render(target, text) {
    if (!window.marked || !window.DOMPurify) {
      target.textContent = text;
      return;
    }
    // Math leaves the text before marked (which would eat its backslashes) and comes back after DOMPurify.
    const rich = window.hearthRich;
    const prepared = rich ? rich.extractMath(text) : {text, maths: []};
    const html = window.marked.parse(prepared.text, {gfm: true, breaks: true, async: false});
    target.innerHTML = window.DOMPurify.sanitize(html, {FORBID_TAGS: ["style", "form", "input", "button"]});
    target.classList.add("markdown");
    for (const link of target.querySelectorAll("a[href]")) {
      link.target = "_blank";
      link.rel = "noopener noreferrer";
    }
    for (const code of target.querySelectorAll("pre > code")) {
      if (window.hljs && !code.classList.contains("language-mermaid")) window.hljs.highlightElement(code);
      const pre = code.parentElement;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      button.addEventListener("click", () => copyText(code.textContent).then(() => flashCopied(button)));
      pre.appendChild(button);
    }
    if (rich) rich.enhance(target, prepared.maths);
  }

  window.hearthMarkdown = {render, copyText, flashCopied};
})();
