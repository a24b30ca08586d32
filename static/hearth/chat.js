// The chat page: sends messages over the websocket, streams replies in (rendered as sanitized markdown),
// stops them, regenerates and edits (each a new version, "< 2/3 >"), loads older messages on scroll, and
// resumes a reply after the socket drops (from the last event index it has: no gap, no duplicate).
(() => {
  "use strict";
  const chat = document.getElementById("chat");
  if (!chat) return;
  const list = document.getElementById("messages");
  const prompt = document.getElementById("prompt");
  const form = document.getElementById("composer");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const picker = document.getElementById("model-picker");
  const status = document.getElementById("status");
  const settingsForm = document.getElementById("settings-form");
  const markdown = window.hearthMarkdown;

  let socket = null;
  let conversation = chat.dataset.conversation || null;
  let retryDelay = 250;
  // job id -> {node, index (last event index seen), done}
  const replies = new Map();
  let activeJob = null;
  let pending = null; // {user: node|null, reply: node} waiting for "accepted"

  function setBusy(busy) {
    sendButton.hidden = busy;
    stopButton.hidden = !busy;
  }

  function say(text, isError) {
    status.textContent = text || "";
    status.classList.toggle("error", Boolean(isError));
  }

  // ---- message nodes (the same markup as templates/webui/_message.html) ----
  // An icon button: the icon from the page's sprite (webui/_icons.html), its name for screen readers and a tooltip.
  function button(className, label, icon) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `icon ${className}`;
    b.setAttribute("aria-label", label);
    b.title = label;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
    use.setAttribute("href", `#i-${icon}`);
    svg.appendChild(use);
    b.appendChild(svg);
    return b;
  }

  function versionForm(target, label, text) {
    const f = document.createElement("form");
    f.method = "post";
    if (target) f.action = `/c/${conversation}/show/${target}/`;
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = chat.dataset.csrf;
    const b = document.createElement("button");
    b.type = "submit";
    b.className = `icon ${label === "Previous version" ? "prev" : "next"}`;
    b.setAttribute("aria-label", label);
    b.textContent = text;
    b.disabled = !target;
    f.append(token, b);
    return f;
  }

  function setVersions(node, versions) {
    const meta = node.querySelector(".meta");
    const old = meta.querySelector(".versions");
    if (old) old.remove();
    if (!versions || versions.count < 2) return;
    const span = document.createElement("span");
    span.className = "versions";
    span.setAttribute("aria-label", `Version ${versions.index} of ${versions.count}`);
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${versions.index}/${versions.count}`;
    span.append(versionForm(versions.prev, "Previous version", "‹"), count, versionForm(versions.next, "Next version", "›"));
    meta.prepend(span);
  }

  function statsText(s) {
    if (s.status === "failed") return `failed: ${s.error || ""}`;
    const tps = s.tokens_per_second ? `${s.tokens_per_second.toFixed(1)} tok/s` : "";
    const ttft = s.time_to_first_token ? `first token ${(s.time_to_first_token * 1000).toFixed(0)} ms` : "";
    return [`${s.completion_tokens || 0} tokens`, tps, ttft, s.finish_reason === "cancelled" ? "stopped" : ""]
      .filter(Boolean).join(" · ");
  }

  function buildMessage(m) {
    const item = document.createElement("li");
    item.className = `message ${m.role}`;
    if (m.id) {
      item.id = `m${m.id}`;
      item.dataset.message = m.id;
    }
    item.dataset.job = m.job || "";
    item.dataset.finished = m.finished === false ? "0" : "1";
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const meta = document.createElement("div");
    meta.className = "meta";
    if (m.role === "assistant") {
      if (m.stats && Object.keys(m.stats).length) {
        const stats = document.createElement("span");
        stats.className = "stats";
        stats.textContent = statsText(m.stats);
        meta.appendChild(stats);
      }
      const other = document.createElement("button");
      other.type = "button";
      other.className = "icon answer-with";
      other.setAttribute("aria-haspopup", "menu");
      other.setAttribute("aria-expanded", "false");
      other.setAttribute("aria-label", "Answer with another model");
      other.title = "Answer with another model";
      other.textContent = "Answer with…";
      meta.append(button("copy-reply", "Copy reply", "copy"), button("regenerate", "Regenerate reply", "regenerate"), other);
    } else {
      meta.append(button("edit", "Edit message", "edit"));
    }
    if (m.dropped) {
      const note = document.createElement("div");
      note.className = "context-note";
      note.textContent = `${m.dropped} earlier message(s) were left out to fit the model's context.`;
      item.append(note);
    }
    item.append(bubble, meta);
    setModel(item, m.model);
    setText(item, m.text || "");
    setVersions(item, m.versions);
    return item;
  }

  // The name of the model that wrote a reply (the conversation's, or another one's: "Answer with…").
  function setModel(node, name) {
    const copy = node.querySelector(".meta .copy-reply");
    if (!name || !copy) return;
    let label = node.querySelector(".meta .model-name");
    if (!label) {
      label = document.createElement("span");
      label.className = "model-name";
      label.title = "The model that wrote this reply";
      copy.before(label);
    }
    label.textContent = name;
  }

  function setText(node, text) {
    node._raw = text;
    const bubble = node.querySelector(".bubble");
    if (node.classList.contains("assistant") && markdown) markdown.render(bubble, text);
    else bubble.textContent = text;
  }

  let renderQueued = new Set();
  function appendText(node, text) {
    node._raw = (node._raw || "") + text;
    if (renderQueued.size === 0) {
      requestAnimationFrame(() => {
        for (const n of renderQueued) setText(n, n._raw);
        renderQueued = new Set();
        follow();
      });
    }
    renderQueued.add(node);
  }

  function removeFrom(node) {
    while (node) {
      const next = node.nextElementSibling;
      node.remove();
      node = next;
    }
  }

  function append(node) {
    list.appendChild(node);
    node.scrollIntoView({block: "end"});
    atBottom = true;
    return node;
  }

  // Auto-scroll follows a streaming reply only while the reader is at the bottom; scrolled up, a
  // "Jump to latest" button appears instead (static/hearth/chat_polish.js shows and hides it).
  let atBottom = true;
  list.addEventListener("scroll", () => {
    atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.dispatchEvent(new CustomEvent("hearth:follow", {detail: {atBottom, behind: false}}));
  }, {passive: true});
  function follow() {
    if (atBottom) list.scrollTop = list.scrollHeight;
    else list.dispatchEvent(new CustomEvent("hearth:follow", {detail: {atBottom, behind: true}}));
  }

  // What the reply is waiting for before its first token: queued, loading the model, reading the prompt.
  function stage(node, text) {
    let note = node.querySelector(".queue-note");
    if (!text) {
      if (note) note.remove();
      return;
    }
    if (!note) {
      note = document.createElement("div");
      note.className = "queue-note muted";
      note.setAttribute("role", "status");
      node.prepend(note);
    }
    note.textContent = text;
  }

  // ---- streaming ----
  function track(jobId, node, index) {
    node.dataset.job = jobId;
    node.dataset.finished = "0";
    node.classList.add("streaming");
    replies.set(jobId, {node, index: index || 0, done: false});
    activeJob = jobId;
    setBusy(true);
  }

  function onQueue(jobId, position) {
    const reply = replies.get(jobId);
    if (!reply || reply.index > 0) return; // it has started
    if (!position) stage(reply.node, "Loading the model…");
    else stage(reply.node, position === 1 ? "Queued: next in line…" : `Queued: position ${position} (${position - 1} ahead)…`);
  }

  function onEvent(jobId, index, event) {
    const reply = replies.get(jobId);
    if (!reply || index <= reply.index) return; // already shown: never duplicate
    reply.index = index;
    if (event.kind === "progress") {
      const share = Math.floor(100 * event.prompt_tokens_read / Math.max(1, event.prompt_tokens));
      stage(reply.node, `Reading the prompt… ${share}% (${event.prompt_tokens_read.toLocaleString()} of ${event.prompt_tokens.toLocaleString()} tokens)`);
      return;
    }
    stage(reply.node, event.kind === "started" ? "Reading the prompt…" : "");
    if (event.kind === "started" && event.dropped_messages && !reply.node.querySelector(".context-note")) {
      const note = document.createElement("div");
      note.className = "context-note";
      note.textContent = `${event.dropped_messages} earlier message(s) were left out to fit the model's context.`;
      reply.node.prepend(note);
    } else if (event.kind === "token") {
      appendText(reply.node, event.text || "");
    } else if (event.kind === "done") {
      reply.done = true;
      setText(reply.node, reply.node._raw || "");
      const stats = document.createElement("span");
      stats.className = "stats";
      stats.textContent = statsText(event);
      reply.node.querySelector(".meta").prepend(stats);
      const versions = reply.node.querySelector(".meta .versions");
      if (versions) reply.node.querySelector(".meta").prepend(versions);
      finish(jobId, reply.node);
    } else if (event.kind === "error") {
      reply.done = true;
      reply.node.classList.add("failed");
      reply.node.querySelector(".bubble").textContent = event.message;
      finish(jobId, reply.node);
    }
  }

  function finish(jobId, node) {
    node.dataset.finished = "1";
    node.classList.remove("streaming");
    if (activeJob === jobId) {
      activeJob = null;
      setBusy(false);
      say("");
    }
  }

  function onAccepted(data) {
    if (data.conversation && !conversation) {
      conversation = String(data.conversation);
      chat.dataset.conversation = conversation;
      history.replaceState(null, "", `/c/${conversation}/`);
      if (settingsForm) settingsForm.action = `/c/${conversation}/settings/`;
      chat.dispatchEvent(new CustomEvent("hearth:conversation", {detail: {id: conversation, title: data.title}}));
    }
    if (!pending) return;
    const {user, reply, versionsOn} = pending;
    pending = null;
    if (user && data.user_message) {
      user.id = `m${data.user_message}`;
      user.dataset.message = data.user_message;
    }
    reply.id = `m${data.message}`;
    reply.dataset.message = data.message;
    reply.classList.remove("pending");
    setModel(reply, data.model);
    if (data.versions) setVersions(versionsOn === "user" ? user : reply, data.versions);
    track(data.job, reply, 0);
    stage(reply, "Waiting for the model…");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${chat.dataset.wsPath}`);
    socket.onopen = () => {
      retryDelay = 250;
      if (pending && pending.lost) {
        // The socket dropped between sending and hearing back: the server's copy of the thread is the truth.
        location.reload();
        return;
      }
      say(activeJob ? "Reconnected." : "");
      for (const [jobId, reply] of replies) {
        if (!reply.done) socket.send(JSON.stringify({type: "resume", job: jobId, after: reply.index}));
      }
    };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "event") onEvent(data.job, data.index, data.event);
      else if (data.type === "queue") onQueue(data.job, data.position);
      else if (data.type === "accepted") onAccepted(data);
      else if (data.type === "error") {
        if (pending) {
          pending.reply.remove();
          if (pending.restore) location.reload();
          pending = null;
        }
        setBusy(Boolean(activeJob));
        say(data.message, true);
      }
    };
    socket.onclose = () => {
      if (pending) pending.lost = true;
      if (activeJob || pending) say("Connection lost; reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    };
  }

  function ready() {
    if (activeJob || pending) {
      say("A reply is still streaming: your message is kept; send it when the reply ends, or press Esc to stop.");
      return false;
    }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      say("Not connected yet; try again in a moment.", true);
      return false;
    }
    return true;
  }

  function settings() {
    if (!settingsForm) return {};
    const data = new FormData(settingsForm);
    const sampling = {};
    for (const name of ["temperature", "top_p", "top_k", "max_tokens", "seed"]) {
      const value = data.get(name);
      if (value !== null && value !== "") sampling[name] = Number(value);
    }
    return {system_prompt: data.get("system_prompt") || "", sampling};
  }

  function model() {
    return picker ? picker.value : "";
  }

  function send() {
    const text = prompt.value;
    if (!text.trim() || !ready()) return;
    const user = append(buildMessage({role: "user", text}));
    const reply = append(buildMessage({role: "assistant", text: "", finished: false}));
    reply.classList.add("pending");
    pending = {user, reply};
    socket.send(JSON.stringify({type: "send", conversation, model: model(), content: text, ...settings()}));
    prompt.value = "";
    setBusy(true);
  }

  // answerWith: another model's name, for this reply only (the conversation keeps the picker's model).
  function regenerate(node, answerWith) {
    if (!node.dataset.message || !ready()) return;
    const reply = buildMessage({role: "assistant", text: "", finished: false});
    reply.classList.add("pending");
    node.before(reply);
    removeFrom(node);
    pending = {user: null, reply, versionsOn: "reply", restore: true};
    const which = answerWith ? {answer_with: answerWith} : {model: model()};
    socket.send(JSON.stringify({type: "regenerate", message: Number(node.dataset.message), ...which}));
    setBusy(true);
  }

  function startEdit(node) {
    if (node.querySelector(".editor") || activeJob) return;
    const editor = document.createElement("form");
    editor.className = "editor";
    const area = document.createElement("textarea");
    area.value = node._raw || node.querySelector(".bubble").textContent;
    area.rows = Math.min(12, area.value.split("\n").length + 1);
    area.setAttribute("aria-label", "Edited message");
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = "Send edit";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "secondary";
    cancel.textContent = "Cancel";
    editor.append(area, save, cancel);
    node.querySelector(".bubble").hidden = true;
    node.insertBefore(editor, node.querySelector(".meta"));
    area.focus();
    const close = () => { editor.remove(); node.querySelector(".bubble").hidden = false; };
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close();
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        editor.requestSubmit();
      }
    });
    editor.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = area.value;
      if (!text.trim() || !ready()) return;
      const user = buildMessage({role: "user", text});
      const reply = buildMessage({role: "assistant", text: "", finished: false});
      reply.classList.add("pending");
      node.before(user, reply);
      removeFrom(node);
      pending = {user, reply, versionsOn: "user", restore: true};
      socket.send(JSON.stringify({type: "edit", message: Number(node.dataset.message), content: text, model: model()}));
      setBusy(true);
    });
  }

  // ---- older messages, loaded as the reader scrolls up ----
  let loadingOlder = false;
  async function loadOlder() {
    const holder = list.querySelector(".older");
    const first = list.querySelector(".message[data-message]");
    if (!holder || !first || loadingOlder) return;
    loadingOlder = true;
    try {
      const response = await fetch(`/c/${conversation}/older/?before=${first.dataset.message}`,
        {headers: {Accept: "application/json"}});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      const height = list.scrollHeight;
      const fragment = document.createDocumentFragment();
      for (const m of data.messages) fragment.appendChild(buildMessage(m));
      holder.after(fragment);
      list.scrollTop += list.scrollHeight - height; // keep what the reader was looking at in place
      if (!data.has_more) holder.remove();
    } catch (error) {
      say(`Could not load older messages (${error.message}).`, true);
    } finally {
      loadingOlder = false;
    }
  }
  // ---- events ----
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", () => {
    if (activeJob && socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({type: "stop", job: activeJob}));
    }
    prompt.focus();
  });
  list.addEventListener("click", (event) => {
    const target = event.target.closest("button");
    if (!target) return;
    const node = target.closest(".message");
    if (target.classList.contains("regenerate")) regenerate(node);
    else if (target.classList.contains("edit")) startEdit(node);
    else if (target.classList.contains("copy-reply") && markdown) {
      markdown.copyText(node._raw || "").then(() => markdown.flashCopied(target));
    }
  });
  list.addEventListener("hearth:answer-with", (event) => regenerate(event.target.closest(".message"), event.detail.model));
  const deleteForm = document.getElementById("delete-form");
  if (deleteForm) {
    deleteForm.addEventListener("submit", (event) => {
      if (!confirm("Delete this conversation and all its messages?")) event.preventDefault();
    });
  }

  // Render what the server sent; a reload during generation: the last reply is still streaming, so follow
  // it from the start.
  const exactTexts = JSON.parse(document.getElementById("message-texts")?.textContent || "{}");
  for (const node of list.querySelectorAll(".message")) {
    const text = exactTexts[node.dataset.message] ?? node.querySelector(".bubble").textContent;
    if (node.classList.contains("assistant") && node.dataset.job && node.dataset.finished === "0") {
      setText(node, "");
      track(node.dataset.job, node, 0);
    } else {
      setText(node, text);
    }
  }
  if (list.lastElementChild) list.lastElementChild.scrollIntoView({block: "end"});
  const olderButton = document.getElementById("load-older");
  function watchOlder() {
    if (!olderButton) return;
    olderButton.addEventListener("click", loadOlder);
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) loadOlder();
    }, {root: list, rootMargin: "200px 0px 0px 0px"}).observe(olderButton.parentElement);
    list.addEventListener("scroll", () => {
      if (list.scrollTop < 200) loadOlder();
    }, {passive: true});
  }

  // Only once the page sits at the latest message: its first scroll is not the reader's.
  requestAnimationFrame(() => requestAnimationFrame(watchOlder));
  window.hearthChat = {replies, get socket() { return socket; }};
  connect();
})();
