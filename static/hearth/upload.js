// Chunked model upload with a progress bar: one .gguf or .zip file, or a Hugging Face folder as its separate
// files (picked together, or the folder itself). Each chunk is PUT at its byte offset (and, in a folder, with
// the file's name); the server only accepts the chunk that continues the file, so a retry never writes twice.
// The upload's id is kept in localStorage under the files' names, sizes and dates, so picking the same file or
// files after a reload resumes where it stopped. The bar shows the progress of the whole upload.
(() => {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const fileInput = document.getElementById("upload-file");
  const folderInput = document.getElementById("upload-folder");
  const nameInput = document.getElementById("upload-name");
  const progress = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const startButton = document.getElementById("upload-start");
  const control = {chunkSize: Number(form.dataset.chunk) || 4 * 1024 * 1024, stopAfter: null, busy: false};
  window.hearthUpload = control;
  const PICKLED = /\.(bin|pt|pth|ckpt|pkl|pickle)$/i;

  const mb = (n) => `${(n / 1024 / 1024).toFixed(1)} MB`;
  const stamp = (file) => `${file.name}:${file.size}:${file.lastModified}`;

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function show(received, size) {
    progress.hidden = false;
    progress.max = size || 1;
    progress.value = received;
    const percent = size ? Math.floor((received / size) * 100) : 100;
    say(`Uploading: ${percent}% (${mb(received)} of ${mb(size)})`);
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

  const message = (result) => (result.body.error ? result.body.error.message : `HTTP ${result.status}`);

  // Keep the input picked last; the other one is cleared.
  let chosen = null;
  fileInput.addEventListener("change", () => { chosen = fileInput; folderInput.value = ""; });
  folderInput.addEventListener("change", () => { chosen = folderInput; fileInput.value = ""; });

  // What the admin picked: one .gguf/.zip file, or the files of one folder. Files in subfolders, hidden files
  // and (beside safetensors weights) pickled ones are left out; the server refuses them anyway.
  function picked() {
    const input = chosen || (fileInput.files.length ? fileInput : folderInput);
    const all = Array.from(input.files || []);
    if (!all.length) return null;
    if (input === fileInput && all.length === 1 && /\.(gguf|zip)$/i.test(all[0].name)) {
      const file = all[0];
      return {files: [file], folder: null, skipped: [], key: `hearth-upload:${stamp(file)}`};
    }
    const hasSafetensors = all.some((file) => file.name.endsWith(".safetensors"));
    let folder = "";
    const files = [];
    const skipped = [];
    for (const file of all) {
      const parts = (file.webkitRelativePath || file.name).split("/");
      if (parts.length > 1) folder = folder || parts[0];
      if (parts.length > 2 || file.name.startsWith(".") || (hasSafetensors && PICKLED.test(file.name))) {
        skipped.push(parts.slice(parts.length > 1 ? 1 : 0).join("/"));
      } else {
        files.push(file);
      }
    }
    files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return {files, folder, skipped, key: `hearth-upload-folder:${files.map(stamp).join("|")}`};
  }

  function sameFiles(upload, choice) {
    const names = (upload.files || []).map((f) => `${f.name}:${f.size}`).join("|");
    return names === choice.files.map((f) => `${f.name}:${f.size}`).join("|");
  }

  async function begin(choice) {
    const saved = localStorage.getItem(choice.key);
    if (saved) {
      const existing = await call(`/models/uploads/${saved}/`);
      if (existing.ok && existing.body.status === "receiving" && (choice.folder === null || sameFiles(existing.body, choice))) {
        return existing.body;
      }
      localStorage.removeItem(choice.key);
    }
    const name = nameInput.value.trim();
    const payload = choice.folder === null
      ? {filename: choice.files[0].name, size: choice.files[0].size, name}
      : {files: choice.files.map((f) => ({name: f.name, size: f.size})), name: name || choice.folder, folder: choice.folder};
    const created = await call("/models/uploads/", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(payload),
    });
    if (!created.ok) throw new Error(message(created));
    localStorage.setItem(choice.key, created.body.id);
    return created.body;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // How much of `file` the server holds, from an upload's JSON: per file in a folder upload.
  function receivedOf(body, file, inFolder) {
    if (!inFolder) return body.received;
    const entry = (body.files || []).find((f) => f.name === file.name);
    return entry ? entry.received : 0;
  }

  async function send(choice, upload) {
    const inFolder = choice.folder !== null;
    let sent = 0;
    let failures = 0;
    show(upload.received, upload.size);
    for (const file of choice.files) {
      let received = receivedOf(upload, file, inFolder);
      const which = inFolder ? `&file=${encodeURIComponent(file.name)}` : "";
      while (received < file.size) {
        if (control.stopAfter !== null && sent >= control.stopAfter) {
          say(`Paused at ${mb(progress.value)}; pick the same ${inFolder ? "files" : "file"} again to resume.`);
          return false;
        }
        const chunk = file.slice(received, received + control.chunkSize);
        let result;
        try {
          result = await call(`/models/uploads/${upload.id}/?offset=${received}${which}`, {method: "PUT", body: chunk});
        } catch (error) {
          result = {ok: false, status: 0, body: {}};
        }
        if (result.ok) {
          received = receivedOf(result.body, file, inFolder);
          sent += 1;
          failures = 0;
          show(result.body.received, upload.size);
        } else if (result.status === 409 && typeof result.body.received === "number") {
          received = receivedOf(result.body, file, inFolder); // the server has more (or less): continue from there
        } else if (result.status === 0 || result.status >= 500) {
          failures += 1;
          if (failures > 30) throw new Error("The connection keeps failing; pick the same files again later to resume.");
          say(`Connection lost at ${mb(progress.value)}; retrying…`, true);
          await sleep(Math.min(500 * failures, 5000));
          const now = await call(`/models/uploads/${upload.id}/`).catch(() => null);
          if (now && now.ok) received = receivedOf(now.body, file, inFolder);
        } else {
          throw new Error(message(result));
        }
      }
    }
    return true;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const choice = picked();
    if (!choice || control.busy) {
      if (!choice) say("Pick a .gguf or .zip file, a model's files, or its folder.", true);
      return;
    }
    const total = choice.files.reduce((sum, file) => sum + file.size, 0);
    if (total > Number(form.dataset.max)) {
      say(`That is ${mb(total)}; this server accepts at most ${mb(Number(form.dataset.max))}.`, true);
      return;
    }
    control.busy = true;
    startButton.disabled = true;
    try {
      const upload = await begin(choice);
      if (!(await send(choice, upload))) return;
      say("Checking the model…");
      const done = await call(`/models/uploads/${upload.id}/finish/`, {method: "POST"});
      localStorage.removeItem(choice.key);
      if (!done.ok) throw new Error(message(done));
      status.textContent = "";
      status.classList.remove("error");
      status.append("Added ");
      const link = document.createElement("a");
      link.href = done.body.url;
      link.textContent = done.body.model;
      status.append(link, " to the library.");
      if (choice.skipped.length) status.append(` Left out: ${choice.skipped.join(", ")}.`);
      progress.value = progress.max;
    } catch (error) {
      progress.hidden = true; // a full bar above "refused" would read as success
      say(`Upload refused: ${error.message}`, true);
    } finally {
      control.busy = false;
      startButton.disabled = false;
    }
  });

  // An unfinished upload can be discarded (its received bytes are deleted).
  const unfinished = document.getElementById("unfinished-uploads");
  if (unfinished) {
    unfinished.addEventListener("click", async (event) => {
      const discard = event.target.closest("button.discard-upload");
      if (!discard || !confirm(`Discard the unfinished upload of ${discard.dataset.name}?`)) return;
      discard.disabled = true;
      const result = await call(`/models/uploads/${discard.dataset.upload}/`, {method: "DELETE"});
      if (!result.ok) {
        discard.disabled = false;
        say(`Could not discard it: ${message(result)}`, true);
        return;
      }
      for (const key of Object.keys(localStorage)) {
        if (localStorage.getItem(key) === discard.dataset.upload) localStorage.removeItem(key);
      }
      discard.closest("li").remove();
      if (!unfinished.querySelector("li")) {
        unfinished.previousElementSibling.remove(); // its heading
        unfinished.remove();
      }
    });
  }

  for (const deleteForm of document.querySelectorAll("form.delete-model")) {
    deleteForm.addEventListener("submit", (event) => {
      if (!confirm(`Delete ${deleteForm.dataset.name} from the library? Its files in the models folder go too.`)) {
        event.preventDefault();
      }
    });
  }
})();
