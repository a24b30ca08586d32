// The jobs page: refreshes the tables every few seconds, and follows each running job over the chat socket
// (the relay's resume from index 0) to show its tokens and speed as they come.
(() => {
  "use strict";
  const root = document.getElementById("jobs-page");
  if (!root) return;
  const tables = document.getElementById("jobs-tables");
  const followed = new Map(); // job id -> {tokens, index}
  let socket = null;

  function follow() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    for (const row of tables.querySelectorAll("tr[data-running]")) {
      const job = row.dataset.job;
      if (!followed.has(job)) {
        followed.set(job, {tokens: 0, index: 0, started: Number(row.dataset.started) * 1000});
        socket.send(JSON.stringify({type: "resume", job, after: 0}));
      }
      paint(job);
    }
  }

  function paint(job) {
    const state = followed.get(job);
    const cell = tables.querySelector(`tr[data-job="${job}"] .progress`);
    if (!state || !cell || !state.index) return;
    const seconds = Math.max(0.001, (Date.now() - state.started) / 1000);
    cell.textContent = `${state.tokens} tokens · ${(state.tokens / seconds).toFixed(1)} tok/s · ${seconds.toFixed(0)} s`;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root.dataset.wsPath}`);
    socket.onopen = () => {
      followed.clear();
      follow();
    };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type !== "event") return;
      const state = followed.get(data.job);
      if (!state || data.index <= state.index) return;
      state.index = data.index;
      if (data.event.kind === "token") state.tokens += 1;
      if (data.event.kind === "done" || data.event.kind === "error") refresh();
      else paint(data.job);
    };
    socket.onclose = () => setTimeout(connect, 1000);
  }

  async function refresh() {
    if (document.activeElement && tables.contains(document.activeElement)) return; // keep keyboard focus
    try {
      const response = await fetch(`${location.pathname}?partial=1`, {credentials: "same-origin"});
      if (response.ok) {
        tables.innerHTML = await response.text();
        follow();
      }
    } catch (error) { /* the next tick tries again */ }
  }

  setInterval(refresh, 3000);
  connect();
})();
