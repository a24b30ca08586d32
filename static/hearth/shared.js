// A shared snapshot (templates/webui/shared.html): replies render as sanitized markdown, as in the chat.
(() => {
  "use strict";
  const markdown = window.hearthMarkdown;
  if (!markdown) return;
  for (const bubble of document.querySelectorAll("#shared .message.assistant .bubble")) {
    markdown.render(bubble, bubble.textContent);
  }
})();
