// The chat page: sends messages over the websocket, streams replies in, stops them, and resumes a reply
// after the socket drops (from the last event index it has: no gap, no duplicate).
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

  let socket = null;
  let conversation = chat.dataset.conversation || null;
  let retryDelay = 250;
  // job id -> {node, index (last event index seen), done}
  const replies = new Map();
  let activeJob = null;

  function setBusy(busy) {
    sendButton.hidden = busy;
    stopButton.hidden = !busy;
  }

  function say(text, isError) {
    status.textContent = text || "";
    status.classList.toggle("error", Boolean(isError));
  }

  function addMessage(role, text) {
    const item = document.createElement("li");
    item.className = `message ${role}`;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    item.appendChild(bubble);
    list.appendChild(item);
    item.scrollIntoView({block: "end"});
    return item;
  }

  function track(jobId, node, index) {
    replies.set(jobId, {node, index: index || 0, done: false});
    activeJob = jobId;
    setBusy(true);
  }

  function onEvent(jobId, index, event) {
    const reply = replies.get(jobId);
    if (!reply || index <= reply.index) return; // already shown: never duplicate
    reply.index = index;
    const bubble = reply.node.querySelector(".bubble");
    if (event.kind === "started" && event.dropped_messages) {
      const note = document.createElement("div");
      note.className = "context-note";
      note.textContent = `${event.dropped_messages} earlier message(s) were left out to fit the model's context.`;
      reply.node.prepend(note);
    } else if (event.kind === "token") {
      bubble.textContent += event.text || "";
      reply.node.scrollIntoView({block: "end"});
    } else if (event.kind === "done") {
      reply.done = true;
      const stats = document.createElement("div");
      stats.className = "stats";
      const tps = event.tokens_per_second ? `${event.tokens_per_second.toFixed(1)} tok/s` : "";
      const ttft = event.time_to_first_token ? `first token ${(event.time_to_first_token * 1000).toFixed(0)} ms` : "";
      stats.textContent = [`${event.completion_tokens || 0} tokens`, tps, ttft, event.finish_reason === "cancelled" ? "stopped" : ""]
        .filter(Boolean).join(" · ");
      reply.node.appendChild(stats);
      finish(jobId);
    } else if (event.kind === "error") {
      reply.done = true;
      reply.node.classList.add("failed");
      bubble.textContent = event.message;
      finish(jobId);
    }
  }

  function finish(jobId) {
    if (activeJob === jobId) {
      activeJob = null;
      setBusy(false);
      say("");
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${chat.dataset.wsPath}`);
    socket.onopen = () => {
      retryDelay = 250;
      say(activeJob ? "Reconnected." : "");
      for (const [jobId, reply] of replies) {
        if (!reply.done) socket.send(JSON.stringify({type: "resume", job: jobId, after: reply.index}));
      }
    };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "event") onEvent(data.job, data.index, data.event);
      else if (data.type === "accepted") {
        if (!conversation) {
          conversation = String(data.conversation);
          history.replaceState(null, "", `/c/${conversation}/`);
        }
        const pending = list.querySelector(".message.assistant.pending");
        pending.classList.remove("pending");
        pending.dataset.job = data.job;
        track(data.job, pending, 0);
      } else if (data.type === "error") {
        const pending = list.querySelector(".message.assistant.pending");
        if (pending) pending.remove();
        setBusy(false);
        say(data.message, true);
      }
    };
    socket.onclose = () => {
      if (activeJob) say("Connection lost; reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    };
  }

  function send() {
    const text = prompt.value;
    if (!text.trim() || activeJob) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      say("Not connected yet; try again in a moment.", true);
      return;
    }
    addMessage("user", text);
    addMessage("assistant", "").classList.add("pending");
    socket.send(JSON.stringify({type: "send", conversation, model: picker ? picker.value : "", content: text}));
    prompt.value = "";
    setBusy(true);
  }

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
  });

  // A reload during generation: the last reply is still streaming, so follow it from the start.
  for (const node of list.querySelectorAll(".message.assistant[data-job]")) {
    if (node.dataset.job && node.dataset.finished === "0") {
      node.querySelector(".bubble").textContent = "";
      track(node.dataset.job, node, 0);
    }
  }
  window.hearthChat = {replies, get socket() { return socket; }};
  connect();
})();
