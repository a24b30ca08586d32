// The API keys page: copy a new key with one click; revoking one asks first (a client using it stops working).
(() => {
  "use strict";
  const copy = document.getElementById("copy-key");
  const key = document.getElementById("new-key");
  if (copy && key) {
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(key.textContent.trim());
      } catch (error) {
        // No clipboard (plain http): select the key so Ctrl+C copies it.
        const range = document.createRange();
        range.selectNodeContents(key);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
        return;
      }
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy"; }, 2000);
    });
  }
  for (const form of document.querySelectorAll("form.revoke-key")) {
    form.addEventListener("submit", (event) => {
      if (!confirm(`Revoke the key ${form.dataset.name}? Programs that use it stop working at once.`)) {
        event.preventDefault();
      }
    });
  }
})();
