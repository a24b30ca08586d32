// Inside the sandboxed diagram frame (webui/views_diagrams.py): Mermaid draws each source the chat page posts
// and the SVG goes back as text. Nothing here can reach the page, its cookies or its DOM.
(() => {
  "use strict";
  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  window.mermaid.initialize({
    startOnLoad: false, securityLevel: "strict", theme: dark ? "dark" : "default", htmlLabels: false,
    flowchart: {htmlLabels: false}, maxTextSize: 20000, maxEdges: 500,
  });
  // Mermaid's SVG is 100% wide with a max-width style: as an image it needs its own size, from its viewBox.
  function sized(svgText) {
    const svg = new DOMParser().parseFromString(svgText, "image/svg+xml").documentElement;
    if (!svg || svg.nodeName !== "svg") return null;
    const box = (svg.getAttribute("viewBox") || "").split(/[\s,]+/).map(Number);
    if (box.length === 4 && box[2] > 0 && box[3] > 0) {
      svg.setAttribute("width", String(Math.ceil(box[2])));
      svg.setAttribute("height", String(Math.ceil(box[3])));
    }
    svg.removeAttribute("style");
    return new XMLSerializer().serializeToString(svg);
  }

  let queue = Promise.resolve();
  let count = 0;
  window.addEventListener("message", (event) => {
    if (event.source !== window.parent || !event.data || typeof event.data.source !== "string") return;
    const {id, source} = event.data;
    queue = queue.then(async () => {
      let svg = null;
      try {
        await window.mermaid.parse(source);
        const drawn = await window.mermaid.render(`diagram-${++count}`, source);
        svg = sized(drawn.svg);
      } catch (error) {
        svg = null;
      }
      for (const scratch of document.querySelectorAll("body > div, body > svg")) scratch.remove();
      window.parent.postMessage({id, svg}, "*");
    });
  });
  window.parent.postMessage({ready: true}, "*");
})();
