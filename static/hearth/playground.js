// The completion playground: a raw prompt goes out over the chat websocket ("complete"), the text streams back.
(() => {
  "use strict";
  const root = document.getElementById("playground");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const form = $("playground-form");
  const output = root.querySelector("#completion .output");
  const echo = root.querySelector("#completion .prompt-echo");
  let socket = null;
  let job = null;
  let index = 0;

  function busy(on) {
    $("pg-run").hidden = on;
    $("pg-stop").hidden = !on;
  }

  function say(text, isError) {
    $("pg-status").textContent = text || "";
    $("pg-status").classList.toggle("error", Boolean(isError));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root.dataset.wsPath}`);
    socket.onopen = () => {
      if (job) socket.send(JSON.stringify({type: "resume", job, after: index}));
    };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "accepted") {
        job = data.job;
        index = 0;
      } else if (data.type === "error") {
        busy(false);
        say(data.message, true);
      } else if (data.type === "event" && data.job === job && data.index > index) {
        index = data.index;
        const event = data.event;
        if (event.kind === "token") output.textContent += event.text || "";
        if (event.kind === "done" || event.kind === "error") {
          if (event.kind === "error") say(event.message, true);
          const tps = event.tokens_per_second ? ` · ${event.tokens_per_second.toFixed(1)} tok/s` : "";
          const ttft = event.time_to_first_token ? ` · first token ${(event.time_to_first_token * 1000).toFixed(0)} ms` : "";
          $("pg-stats").textContent = event.kind === "done" ? `${event.completion_tokens || 0} tokens${tps}${ttft}${event.finish_reason === "cancelled" ? " · stopped" : ""}` : "";
          job = null;
          busy(false);
        }
      }
    };
    socket.onclose = () => setTimeout(connect, 500);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (job || !socket || socket.readyState !== WebSocket.OPEN) return;
    const sampling = {temperature: $("pg-temperature").value, max_tokens: $("pg-max-tokens").value};
    if ($("pg-seed").value) sampling.seed = $("pg-seed").value;
    echo.textContent = $("pg-prompt").value;
    output.textContent = "";
    $("pg-stats").textContent = "";
    say("");
    busy(true);
    socket.send(JSON.stringify({type: "complete", model: $("pg-model").value, prompt: $("pg-prompt").value, sampling}));
  });
  $("pg-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  $("pg-stop").addEventListener("click", () => {
    if (job) socket.send(JSON.stringify({type: "stop", job}));
  });
  connect();
})();
