// Organizing the chat page (webui/views_organize.py): a conversation's ⋯ menu (pin, move to a folder, tags,
// archive), a folder's (rename, delete), drag and drop into folders, folders that fold (remembered here), and a
// reply's "Answer with…" menu of models. Menus follow the ARIA menu pattern (arrows, Home/End, Esc). Writes are
// POSTs with the CSRF token; the sidebar is then re-read from the server, which renders it.
(() => {
  "use strict";
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !confirm(message)) event.preventDefault();
  });
  const chat = document.getElementById("chat");
  const list = document.getElementById("conversation-list");
  if (!chat || !list) return;
  const status = document.getElementById("status");
  const TYPE = "application/x-hearth-conversation";
  const FOLDED = "hearth.folded";

  function say(text, isError) {
    if (!status) return;
    status.textContent = text || "";
    status.classList.toggle("error", Boolean(isError));
  }

  async function post(url, fields) {
    const body = new URLSearchParams(); // a form-urlencoded body (an empty multipart one is refused)
    for (const [name, value] of Object.entries(fields || {})) body.append(name, value);
    const response = await fetch(url, {method: "POST", body, credentials: "same-origin",
      headers: {Accept: "application/json", "X-CSRFToken": chat.dataset.csrf}});
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error ? data.error.message : `HTTP ${response.status}`);
    return data;
  }

  async function refresh() {
    const params = new URLSearchParams();
    const q = document.querySelector("#search-form input[name=q]");
    if (q && q.value) params.set("q", q.value);
    const tag = list.querySelector(".filter-note[data-tag]");
    if (tag) params.set("tag", tag.dataset.tag);
    const open = chat.dataset.conversation;
    const response = await fetch(`${open ? `/c/${open}/` : "/"}?${params}`,
      {headers: {Accept: "text/html"}, credentials: "same-origin"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("conversation-list");
    if (fresh) list.replaceChildren(...fresh.childNodes);
  }

  // Run a write, re-read the sidebar, put the focus back near where it was.
  async function act(url, fields, focusId) {
    let data = {};
    try {
      data = await post(url, fields);
      await refresh();
      say(data.message || "");
    } catch (error) {
      say(error.message, true);
    }
    if (!dialog.open) {
      const row = focusId && list.querySelector(`.conv[data-conversation="${focusId}"] .conv-menu`);
      (row || document.querySelector("#search-form input")).focus();
    }
    return data;
  }

  // ---- the menu (one, moved to whichever button opened it) ----
  const menu = document.createElement("div");
  menu.className = "organize-menu";
  menu.setAttribute("role", "menu");
  menu.hidden = true;
  (document.querySelector("main") || document.body).appendChild(menu);
  let opener = null;

  function closeMenu(focusOpener) {
    if (menu.hidden) return;
    menu.hidden = true;
    if (opener) {
      opener.setAttribute("aria-expanded", "false");
      if (focusOpener) opener.focus();
    }
    opener = null;
  }

  function openMenu(button, label, items) {
    closeMenu(false);
    menu.replaceChildren(...items.map(([text, run]) => {
      const item = document.createElement("button");
      item.type = "button";
      item.setAttribute("role", "menuitem");
      item.tabIndex = -1;
      item.textContent = text;
      if (run) item.addEventListener("click", () => { closeMenu(false); run(); });
      else item.disabled = true;
      return item;
    }));
    menu.setAttribute("aria-label", label);
    opener = button;
    button.setAttribute("aria-expanded", "true");
    menu.hidden = false;
    const box = button.getBoundingClientRect();
    menu.style.top = `${Math.max(8, Math.min(box.bottom + 2, innerHeight - menu.offsetHeight - 8))}px`;
    menu.style.left = `${Math.max(8, Math.min(box.left, innerWidth - menu.offsetWidth - 8))}px`;
    (menu.querySelector("button:not(:disabled)") || menu.firstElementChild).focus();
  }

  menu.addEventListener("keydown", (event) => {
    const items = [...menu.querySelectorAll("button:not(:disabled)")];
    const at = items.indexOf(document.activeElement);
    const go = {ArrowDown: at + 1, ArrowUp: at - 1 + items.length, Home: 0, End: items.length - 1}[event.key];
    if (go !== undefined && items.length) {
      items[go % items.length].focus();
      event.preventDefault();
    } else if (event.key === "Escape" || event.key === "Tab") {
      closeMenu(true);
      event.preventDefault();
      event.stopPropagation();
    }
  });
  document.addEventListener("click", (event) => {
    if (!menu.hidden && !menu.contains(event.target) && !(opener && opener.contains(event.target))) closeMenu(false);
  });

  // ---- a small dialog: a folder's new name, a conversation's tags ----
  const dialog = document.createElement("dialog");
  dialog.className = "organize-dialog";
  dialog.setAttribute("aria-labelledby", "organize-dialog-title");
  const heading = document.createElement("h2");
  heading.id = "organize-dialog-title";
  const tagList = document.createElement("ul");
  tagList.className = "tag-list";
  const form = document.createElement("form");
  const label = document.createElement("label");
  const labelText = document.createElement("span");
  const input = document.createElement("input");
  input.name = "value";
  input.required = true;
  label.append(labelText, " ", input);
  const submit = document.createElement("button");
  submit.type = "submit";
  const done = document.createElement("button");
  done.type = "button";
  done.className = "secondary";
  done.textContent = "Close";
  done.addEventListener("click", () => dialog.close());
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(submit, done);
  form.append(label, actions);
  dialog.append(heading, tagList, form);
  (document.querySelector("main") || document.body).appendChild(dialog);
  let onSubmit = null;
  let returnFocus = null;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (onSubmit) onSubmit(input.value);
  });
  dialog.addEventListener("close", () => { if (returnFocus) returnFocus(); });
  dialog.addEventListener("keydown", (event) => { if (event.key === "Escape") event.stopPropagation(); });

  function ask({title, field, action, value, maxLength, tags, run, back}) {
    heading.textContent = title;
    labelText.textContent = field;
    submit.textContent = action;
    input.value = value || "";
    input.maxLength = maxLength;
    tagList.hidden = !tags;
    onSubmit = run;
    returnFocus = back;
    if (!dialog.open) dialog.showModal();
    input.focus();
  }

  function showTags(id, tags) {
    tagList.replaceChildren(...tags.map((name) => {
      const item = document.createElement("li");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "icon";
      remove.setAttribute("aria-label", `Remove the tag ${name}`);
      remove.textContent = "×";
      remove.addEventListener("click", async () => {
        const data = await act(`/c/${id}/tags/remove/`, {tag: name});
        if (data.ok) showTags(id, data.tags);
        input.focus();
      });
      item.append(`${name} `, remove);
      return item;
    }));
    if (!tags.length) tagList.replaceChildren(Object.assign(document.createElement("li"), {className: "muted", textContent: "No tags yet."}));
  }

  function editTags(id, title, tags) {
    const back = () => {
      const row = list.querySelector(`.conv[data-conversation="${id}"] .conv-menu`);
      (row || document.querySelector("#search-form input")).focus();
    };
    ask({title: `Tags of “${title}”`, field: "New tag", action: "Add tag", maxLength: 40, tags: true, back,
      run: async (value) => {
        const data = await act(`/c/${id}/tags/add/`, {tag: value});
        if (data.ok) {
          showTags(id, data.tags);
          input.value = "";
        }
        input.focus();
      }});
    showTags(id, tags);
  }

  // ---- the ⋯ menus ----
  function conversationMenu(button) {
    const row = button.closest(".conv");
    const id = row.dataset.conversation;
    const title = row.querySelector(".conv-title").textContent;
    const pinned = row.dataset.pinned === "1";
    const folders = JSON.parse((list.querySelector("#folder-index") || {}).textContent || "[]");
    const items = [[pinned ? "Unpin" : "Pin", () => act(`/c/${id}/pin/`, {pinned: pinned ? "0" : "1"}, id)]];
    for (const folder of folders) {
      if (String(folder.id) !== row.dataset.folder) {
        items.push([`Move to “${folder.name}”`, () => act(`/c/${id}/move/`, {folder: folder.id}, id)]);
      }
    }
    if (row.dataset.folder) items.push(["Remove from folder", () => act(`/c/${id}/move/`, {folder: ""}, id)]);
    const tags = [...row.querySelectorAll(".conv-tags .tag")].map((tag) => tag.textContent);
    items.push(["Tags…", () => editTags(id, title, tags)]);
    items.push(["Archive", async () => {
      await act(`/c/${id}/archive/`, {archived: "1"});
      if (chat.dataset.conversation === id) location.assign("/");
    }]);
    openMenu(button, `Options for ${title}`, items);
  }

  function folderMenu(button) {
    const folder = button.closest(".folder");
    const {folder: id, name} = folder.dataset;
    const back = () => {
      const again = list.querySelector(`.folder[data-folder="${id}"] .folder-menu`);
      (again || document.querySelector("#search-form input")).focus();
    };
    openMenu(button, `Options for folder ${name}`, [
      ["Rename…", () => ask({title: `Rename the folder “${name}”`, field: "Folder name", action: "Rename", value: name,
        maxLength: 80, back, run: async (value) => {
          const data = await act(`/folders/${id}/rename/`, {name: value});
          if (data.ok) dialog.close();
        }})],
      ["Delete folder", () => {
        if (confirm(`Delete the folder “${name}”? Its conversations are kept.`)) act(`/folders/${id}/delete/`, {});
        else back();
      }],
    ]);
  }

  function modelMenu(button) {
    const node = button.closest(".message");
    const own = (node.querySelector(".model-name") || {}).textContent;
    const picker = document.getElementById("model-picker");
    const names = picker ? [...picker.options].map((option) => option.value).filter((name) => name !== own) : [];
    const items = names.map((name) => [`Answer with ${name}`, () => node.dispatchEvent(
      new CustomEvent("hearth:answer-with", {bubbles: true, detail: {model: name}}))]);
    openMenu(button, "Answer with another model", items.length ? items : [["No other model in the library", null]]);
  }

  const sidebar = document.getElementById("sidebar");
  sidebar.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button === opener && !menu.hidden) closeMenu(true);
    else if (button.classList.contains("conv-menu")) conversationMenu(button);
    else if (button.classList.contains("folder-menu")) folderMenu(button);
    else if (button.classList.contains("folder-toggle")) {
      const open = button.getAttribute("aria-expanded") !== "true";
      const folded = new Set(JSON.parse(localStorage.getItem(FOLDED) || "[]"));
      const id = button.closest(".folder").dataset.folder;
      if (open) folded.delete(id);
      else folded.add(id);
      localStorage.setItem(FOLDED, JSON.stringify([...folded]));
      fold();
    }
  });
  const messages = document.getElementById("messages");
  if (messages) {
    messages.addEventListener("click", (event) => {
      const button = event.target.closest("button.answer-with");
      if (button && button === opener && !menu.hidden) closeMenu(true);
      else if (button) modelMenu(button);
    });
  }

  // New folder: the form works without this script too (a POST and a redirect back).
  const newFolder = document.querySelector("#new-folder form");
  if (newFolder) {
    newFolder.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = newFolder.elements.name;
      const data = await act(newFolder.action, {name: name.value});
      if (data.ok) {
        name.value = "";
        newFolder.closest("details").open = false;
        const made = list.querySelector(`.folder[data-folder="${data.folder}"] .folder-toggle`);
        if (made) made.focus();
      }
    });
  }

  // ---- folders fold (remembered in this browser) ----
  function fold() {
    const folded = new Set(JSON.parse(localStorage.getItem(FOLDED) || "[]"));
    for (const folder of list.querySelectorAll(".folder")) {
      const closed = folded.has(folder.dataset.folder);
      folder.querySelector(".folder-toggle").setAttribute("aria-expanded", String(!closed));
      folder.querySelector("ul").hidden = closed;
    }
  }
  fold();
  new MutationObserver(fold).observe(list, {childList: true}); // the sidebar re-read (here or by chat_polish.js)

  // ---- drag a conversation onto a folder (or onto "Chats": out of its folder) ----
  let dragged = null;
  list.addEventListener("dragstart", (event) => {
    const row = event.target.closest && event.target.closest(".conv");
    if (!row) return;
    dragged = row.dataset.conversation;
    event.dataTransfer.setData(TYPE, dragged);
    event.dataTransfer.effectAllowed = "move";
  });
  const zoneOf = (event) => dragged && event.target.closest && event.target.closest(".drop-zone");
  list.addEventListener("dragover", (event) => {
    const zone = zoneOf(event);
    if (!zone) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    for (const other of list.querySelectorAll(".drop-target")) if (other !== zone) other.classList.remove("drop-target");
    zone.classList.add("drop-target");
  });
  list.addEventListener("drop", (event) => {
    const zone = zoneOf(event);
    if (!zone) return;
    event.preventDefault();
    const row = list.querySelector(`.conv[data-conversation="${dragged}"]`);
    if (row && row.dataset.folder !== zone.dataset.folder) act(`/c/${dragged}/move/`, {folder: zone.dataset.folder}, dragged);
  });
  list.addEventListener("dragend", () => {
    dragged = null;
    for (const zone of list.querySelectorAll(".drop-target")) zone.classList.remove("drop-target");
  });
})();
