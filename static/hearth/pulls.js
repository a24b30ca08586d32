// The library page's pulls from the Hugging Face Hub: "List its files" fills the file picker from the hub (size and
// quantization of each GGUF file, the default chosen), and while a pull runs its table is fetched again every second
// (the server renders it: bytes, speed, time left), keeping keyboard focus where it is.
(() => {
  "use strict";
  const box = document.getElementById("pulls-box");
  const form = document.getElementById("pull-form");
  if (!box || !form) return;
  const repo = document.getElementById("pull-repo");
  const revision = document.getElementById("pull-revision");
  const picker = document.getElementById("pull-file");
  const status = document.getElementById("pull-lookup-status");
  const defaultOption = picker.options[0].cloneNode(true);

  function megabytes(size) {
    return size >= 1024 ** 3 ? `${(size / 1024 ** 3).toFixed(1)} GB` : `${(size / 1024 ** 2).toFixed(1)} MB`;
  }

  async function lookUp() {
    if (!repo.value.trim()) {
      status.textContent = "Type a repo first, owner/name.";
      return;
    }
    status.textContent = "Asking the hub…";
    const query = new URLSearchParams({repo: repo.value.trim(), revision: revision.value.trim()});
    try {
      const response = await fetch(`${form.dataset.filesUrl}?${query}`, {credentials: "same-origin"});
      const data = await response.json();
      if (!response.ok) {
        status.textContent = data.error ? data.error.message : `The hub lookup failed (${response.status}).`;
        return;
      }
      picker.replaceChildren(defaultOption.cloneNode(true));
      if (data.format === "gguf") {
        for (const file of data.files) {
          const option = new Option(`${file.name} — ${file.quant || "?"} — ${megabytes(file.size)}` +
            (file.parts > 1 ? ` (${file.parts} parts)` : ""), file.name);
          option.selected = Boolean(file.default);
          picker.add(option);
        }
        status.textContent = `${data.files.length} GGUF model(s) at commit ${data.commit.slice(0, 12)}.`;
      } else {
        status.textContent = `A Hugging Face folder: ${data.files.length} files, ${megabytes(data.size)} ` +
          `(${data.files.map((file) => file.name).join(", ")}).`;
      }
    } catch (error) {
      status.textContent = "Could not reach this server; try again.";
    }
  }

  async function refresh() {
    const table = box.querySelector("#pull-table");
    if (!table || table.dataset.active !== "1") return;
    if (document.activeElement && box.contains(document.activeElement)) return; // keep keyboard focus
    try {
      const response = await fetch(box.dataset.partialUrl, {credentials: "same-origin"});
      if (response.ok) box.innerHTML = await response.text();
    } catch (error) { /* the next tick tries again */ }
  }

  document.getElementById("pull-lookup").addEventListener("click", lookUp);
  setInterval(refresh, 1000);
})();
