// The chat page's finishing touches, beside chat.js: a new conversation shows up in the sidebar, the tab
// title and Settings (Save/Rename/Delete) without a reload; search filters the sidebar without leaving the
// open chat; a welcome with starter prompts on an empty chat; "Jump to latest" while scrolled up during a
// reply; Esc stops a streaming reply or closes Settings.
(() => {
  "use strict";
  const chat = document.getElementById("chat");
  if (!chat) return;
  const list = document.getElementById("messages");
  const prompt = document.getElementById("prompt");
  const settings = document.getElementById("settings");
  const stopButton = document.getElementById("stop");
  const jump = document.getElementById("jump-latest");
  const searchForm = document.getElementById("search-form");
  const sidebarList = document.getElementById("conversation-list");

  async function pageOf(url) {
    const response = await fetch(url, {headers: {Accept: "text/html"}, credentials: "same-origin"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return new DOMParser().parseFromString(await response.text(), "text/html");
  }

  function confirmDelete(form) {
    form.addEventListener("submit", (event) => {
      if (!confirm("Delete this conversation and all its messages?")) event.preventDefault();
    });
  }

  // ---- a new conversation, after the first send ----
  chat.addEventListener("hearth:conversation", async (event) => {
    const {id, title} = event.detail;
    if (title) document.title = `${title} · Hearth`;
    if (searchForm) searchForm.action = `/c/${id}/`;
    try {
      const fresh = await pageOf(`/c/${id}/`);
      const freshList = fresh.getElementById("conversation-list");
      if (freshList && sidebarList) sidebarList.replaceChildren(...freshList.childNodes);
      const form = document.getElementById("settings-form");
      const freshForm = fresh.getElementById("settings-form");
      if (form && freshForm) {
        const note = form.querySelector(":scope > p.muted");
        const save = freshForm.querySelector("button[type=submit]");
        if (note && save) note.replaceWith(document.importNode(save, true));
        // Everything the page shows under the settings of a saved conversation (rename, export, share, delete).
        while (form.nextElementSibling) form.nextElementSibling.remove();
        let part = freshForm.nextElementSibling;
        while (part) {
          const copy = document.importNode(part, true);
          settings.appendChild(copy);
          if (copy.id === "delete-form") confirmDelete(copy);
          part = part.nextElementSibling;
        }
        chat.dispatchEvent(new CustomEvent("hearth:settings", {detail: {id}}));
      }
    } catch (error) {
      // The chat goes on; a reload shows the conversation in the sidebar.
    }
  });

  // ---- search filters the sidebar in place ----
  if (searchForm && sidebarList) {
    searchForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const q = new FormData(searchForm).get("q") || "";
      const open = chat.dataset.conversation;
      const url = `${open ? `/c/${open}/` : "/"}?q=${encodeURIComponent(q)}`;
      try {
        const fresh = await pageOf(url);
        const freshList = fresh.getElementById("conversation-list");
        if (freshList) sidebarList.replaceChildren(...freshList.childNodes);
      } catch (error) {
        searchForm.submit();
      }
    });
  }

  // ---- welcome on an empty chat ----
  const welcome = document.getElementById("welcome");
  if (welcome) {
    const picker = document.getElementById("model-picker");
    const name = document.getElementById("welcome-model");
    if (picker && name) picker.addEventListener("change", () => { name.textContent = picker.value; });
    welcome.addEventListener("click", (event) => {
      const starter = event.target.closest("button.starter");
      if (!starter) return;
      prompt.value = starter.textContent;
      prompt.focus();
      prompt.setSelectionRange(prompt.value.length, prompt.value.length);
    });
    const hideWhenUsed = () => { if (list.querySelector(".message")) welcome.hidden = true; };
    new MutationObserver(hideWhenUsed).observe(list, {childList: true});
    hideWhenUsed();
  }

  // ---- jump to latest ----
  if (jump) {
    list.addEventListener("hearth:follow", (event) => {
      if (event.detail.atBottom) jump.hidden = true;
      else if (event.detail.behind) jump.hidden = false;
    });
    jump.addEventListener("click", () => {
      list.scrollTop = list.scrollHeight;
      jump.hidden = true;
      prompt.focus();
    });
  }

  // ---- phone width: the sidebar as a drawer ----
  const sidebar = document.getElementById("sidebar");
  const toggle = document.getElementById("sidebar-toggle");
  const backdrop = document.createElement("div");
  backdrop.className = "drawer-backdrop";
  backdrop.hidden = true;
  document.body.appendChild(backdrop);
  function drawer(open) {
    if (!sidebar || !toggle) return;
    sidebar.classList.toggle("open", open);
    toggle.setAttribute("aria-expanded", String(open));
    backdrop.hidden = !open;
    if (open) {
      const current = sidebar.querySelector("a[aria-current]") || sidebar.querySelector("a, input");
      if (current) setTimeout(() => current.focus(), 50); // once it is visible
    }
  }
  const drawerOpen = () => Boolean(sidebar && sidebar.classList.contains("open"));
  if (toggle) toggle.addEventListener("click", () => drawer(!drawerOpen()));
  backdrop.addEventListener("click", () => drawer(false));

  // ---- Esc: close the drawer or Settings, else stop the streaming reply ----
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented || event.isComposing) return;
    if (event.target.closest && event.target.closest(".editor")) return; // Esc there cancels the edit
    if (drawerOpen()) {
      drawer(false);
      toggle.focus();
      event.preventDefault();
    } else if (settings && settings.open) {
      settings.open = false;
      settings.querySelector("summary").focus();
      event.preventDefault();
    } else if (stopButton && !stopButton.hidden) {
      stopButton.click();
      event.preventDefault();
    }
  });
})();
