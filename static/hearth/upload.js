// Chunked model upload with a progress bar. Each chunk is PUT at its byte offset; the server only accepts
// the chunk that continues the file, so a retry never writes twice. The upload's id is kept in localStorage
// under the file's name, size and date, so picking the same file after a reload resumes where it stopped.
(() => {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const fileInput = document.getElementById("upload-file");
  const nameInput = document.getElementById("upload-name");
  const progress = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const startButton = document.getElementById("upload-start");
  const control = {chunkSize: Number(form.dataset.chunk) || 4 * 1024 * 1024, stopAfter: null, busy: false};
  window.hearthUpload = control;

  const mb = (n) => `${(n / 1024 / 1024).toFixed(1)} MB`;
  const keyFor = (file) => `hearth-upload:${file.name}:${file.size}:${file.lastModified}`;

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function show(received, size) {
    progress.hidden = false;
    progress.max = size;
    progress.value = received;
    say(`Uploading: ${Math.floor((received / size) * 100)}% (${mb(received)} of ${mb(size)})`);
  }

  async function call(url, options = {}) {
    const response = await fetch(url, {
      credentials: "same-origin",
      ...options,
      headers: {"X-CSRFToken": form.dataset.csrf, Accept: "application/json", ...(options.headers || {})},
    });
    let body = {};
    try { body = await response.json(); } catch (error) { body = {}; }
    return {ok: response.ok, status: response.status, body};
  }

  async function begin(file) {
    const saved = localStorage.getItem(keyFor(file));
    if (saved) {
      const existing = await call(`/models/uploads/${saved}/`);
      if (existing.ok && existing.body.status === "receiving") return existing.body;
      localStorage.removeItem(keyFor(file));
    }
    const created = await call("/models/uploads/", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({filename: file.name, size: file.size, name: nameInput.value.trim()}),
    });
    if (!created.ok) throw new Error(created.body.error ? created.body.error.message : `HTTP ${created.status}`);
    localStorage.setItem(keyFor(file), created.body.id);
    return created.body;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function send(file, upload) {
    let received = upload.received;
    let sent = 0;
    let failures = 0;
    show(received, file.size);
    while (received < file.size) {
      if (control.stopAfter !== null && sent >= control.stopAfter) {
        say(`Paused at ${mb(received)}; pick the same file again to resume.`);
        return false;
      }
      const chunk = file.slice(received, received + control.chunkSize);
      let result;
      try {
        result = await call(`/models/uploads/${upload.id}/?offset=${received}`, {method: "PUT", body: chunk});
      } catch (error) {
        result = {ok: false, status: 0, body: {}};
      }
      if (result.ok) {
        received = result.body.received;
        sent += 1;
        failures = 0;
        show(received, file.size);
      } else if (result.status === 409 && typeof result.body.received === "number") {
        received = result.body.received; // the server has more (or less) than we thought: continue from there
      } else if (result.status === 0 || result.status >= 500) {
        failures += 1;
        if (failures > 30) throw new Error("The connection keeps failing; pick the file again later to resume.");
        say(`Connection lost at ${mb(received)}; retrying…`, true);
        await sleep(Math.min(500 * failures, 5000));
        const now = await call(`/models/uploads/${upload.id}/`).catch(() => null);
        if (now && now.ok) received = now.body.received;
      } else {
        throw new Error(result.body.error ? result.body.error.message : `HTTP ${result.status}`);
      }
    }
    return true;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = fileInput.files[0];
    if (!file || control.busy) return;
    if (file.size > Number(form.dataset.max)) {
      say(`That file is ${mb(file.size)}; this server accepts at most ${mb(Number(form.dataset.max))}.`, true);
      return;
    }
    control.busy = true;
    startButton.disabled = true;
    try {
      const upload = await begin(file);
      if (!(await send(file, upload))) return;
      say("Checking the model…");
      const done = await call(`/models/uploads/${upload.id}/finish/`, {method: "POST"});
      localStorage.removeItem(keyFor(file));
      if (!done.ok) throw new Error(done.body.error ? done.body.error.message : `HTTP ${done.status}`);
      status.textContent = "";
      status.classList.remove("error");
      status.append("Added ");
      const link = document.createElement("a");
      link.href = done.body.url;
      link.textContent = done.body.model;
      status.append(link, " to the library.");
      progress.value = progress.max;
    } catch (error) {
      say(`Upload refused: ${error.message}`, true);
    } finally {
      control.busy = false;
      startButton.disabled = false;
    }
  });

  for (const deleteForm of document.querySelectorAll("form.delete-model")) {
    deleteForm.addEventListener("submit", (event) => {
      if (!confirm(`Delete ${deleteForm.dataset.name} from the library? Its files in the models folder go too.`)) {
        event.preventDefault();
      }
    });
  }
})();
