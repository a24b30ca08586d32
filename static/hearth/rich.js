// Math and diagrams in replies, loaded only when a reply has some.
//
// Math ($…$, $$…$$, \(…\), \[…\]) is taken out of the text before marked sees it (so `\,`, `\\` and `_` reach
// KaTeX untouched) and put back after DOMPurify as placeholders that KaTeX renders into (trust off, expansion
// capped; its output is sanitized again in place). ```mermaid blocks are drawn by Mermaid (securityLevel
// "strict", no HTML labels) inside a sandboxed frame (/diagram-frame/: an opaque origin, no cookies, no access
// to this page), and the SVG it sends back is shown as an <img>: an image runs no script, loads nothing and
// takes no clicks, whatever the diagram says. KaTeX and the frame (with Mermaid) load on first use.
(() => {
  "use strict";
  const script = document.currentScript;
  const urls = script ? script.dataset : {};
  const OPEN = "\uE000";
  const CLOSE = "\uE001";
  const PLACEHOLDER = /\uE000(\d+)\uE001/g;
  // Code (fenced or inline) is left alone; an unclosed fence runs to the end (a reply still streaming).
  const CODE = /(?:^|\n)[ ]{0,3}(`{3,}|~{3,})[^\n]*(?:\n[\s\S]*?(?:\n[ ]{0,3}\1[`~]*[ \t]*(?=\n|$)|$)|$)|(`+)(?:(?!\n[ \t]*\n)[\s\S])*?[^`]\2(?!`)/g;
  // An escaped dollar; $$display$$; \[display\]; \(inline\); $inline$ (not "$5 and $6": no space inside the
  // dollars, no digit right after the closing one).
  const MATH = /\\\$|\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|\\\(([\s\S]+?)\\\)|\$(?![\s$])((?:\\[\s\S]|[^\\$\n])+?)(?<![\s\\])\$(?!\d)/g;
  const KATEX_OPTIONS = {throwOnError: false, trust: false, strict: "ignore", maxExpand: 500, maxSize: 20,
                         output: "htmlAndMathml"};

  const loads = new Map();
  function load(kind) {
    if (loads.has(kind)) return loads.get(kind);
    const promise = new Promise((resolve, reject) => {
      if (kind === "katex" && urls.katexCss) {
        const link = document.createElement("link");
        link.rel = "stylesheet";
        link.href = urls.katexCss;
        document.head.appendChild(link);
      }
      const tag = document.createElement("script");
      tag.src = urls[kind];
      tag.onload = () => resolve();
      tag.onerror = () => reject(new Error(`could not load ${kind}`));
      document.head.appendChild(tag);
    });
    loads.set(kind, promise);
    return promise;
  }

  function mathIn(text, maths) {
    return text.replace(MATH, (match, display1, display2, inline1, inline2) => {
      if (match === "\\$") return match;
      const tex = display1 ?? display2 ?? inline1 ?? inline2;
      if (!tex.trim()) return match;
      maths.push({tex, display: display1 !== undefined || display2 !== undefined, raw: match});
      return `${OPEN}${maths.length - 1}${CLOSE}`;
    });
  }

  // text -> {text: with math replaced by placeholders, maths: [{tex, display, raw}]}
  function extractMath(text) {
    const maths = [];
    if (!/[$\\]/.test(text)) return {text, maths};
    let out = "";
    let last = 0;
    for (const code of text.matchAll(CODE)) {
      out += mathIn(text.slice(last, code.index), maths) + code[0];
      last = code.index + code[0].length;
    }
    out += mathIn(text.slice(last), maths);
    return {text: out, maths};
  }

  function renderMath(span, math) {
    span.textContent = "";
    window.katex.render(math.tex, span, {...KATEX_OPTIONS, displayMode: math.display});
    if (window.DOMPurify) window.DOMPurify.sanitize(span, {IN_PLACE: true, ADD_TAGS: ["semantics", "annotation"], ADD_ATTR: ["encoding"]});
    span.classList.remove("math-pending");
  }

  function placeMath(target, maths) {
    const walker = document.createTreeWalker(target, NodeFilter.SHOW_TEXT);
    const found = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.nodeValue.includes(OPEN)) found.push(node);
    }
    const spans = [];
    for (const node of found) {
      const inCode = Boolean(node.parentElement.closest("code, pre"));
      const fragment = document.createDocumentFragment();
      let last = 0;
      for (const match of node.nodeValue.matchAll(PLACEHOLDER)) {
        const math = maths[Number(match[1])];
        if (!math) continue;
        fragment.append(node.nodeValue.slice(last, match.index));
        last = match.index + match[0].length;
        if (inCode) {
          fragment.append(math.raw);
          continue;
        }
        const span = document.createElement("span");
        span.className = math.display ? "math math-display" : "math math-inline";
        span.textContent = math.raw;
        spans.push([span, math]);
        fragment.append(span);
      }
      fragment.append(node.nodeValue.slice(last));
      node.replaceWith(fragment);
    }
    if (!spans.length) return;
    const draw = () => {
      for (const [span, math] of spans) if (span.isConnected) renderMath(span, math);
    };
    if (window.katex) {
      draw();
      return;
    }
    for (const [span] of spans) span.classList.add("math-pending");
    load("katex").then(draw, () => {});
  }

  // ---- diagrams: drawn in a sandboxed frame (opaque origin, scripts only from this site), shown as images ----
  const diagrams = new Map(); // source -> Promise<data: URL of the SVG, or null when it does not parse>
  const waiting = new Map(); // request id -> resolve
  let frame = null;
  let frameReady = null;
  let count = 0;

  function diagramFrame() {
    if (frameReady) return frameReady;
    frameReady = new Promise((resolve) => {
      frame = document.createElement("iframe");
      frame.setAttribute("sandbox", "allow-scripts");
      frame.setAttribute("aria-hidden", "true");
      frame.tabIndex = -1;
      frame.title = "Diagram renderer";
      frame.className = "diagram-frame";
      window.addEventListener("message", (event) => {
        if (!frame || event.source !== frame.contentWindow || !event.data) return;
        if (event.data.ready) resolve();
        const done = waiting.get(event.data.id);
        if (done) {
          waiting.delete(event.data.id);
          done(typeof event.data.svg === "string" ? asImage(event.data.svg) : null);
        }
      });
      frame.src = urls.diagramFrame;
      document.body.appendChild(frame);
    });
    return frameReady;
  }

  function asImage(svgText) {
    // The frame sized the SVG; as an image it cannot run or load anything, whatever it holds.
    if (!svgText.startsWith("<svg")) return null;
    return `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svgText)}`;
  }

  function diagram(source) {
    if (!diagrams.has(source)) {
      diagrams.set(source, diagramFrame().then(() => new Promise((resolve) => {
        const id = ++count;
        waiting.set(id, resolve);
        frame.contentWindow.postMessage({id, source}, "*");
      })));
    }
    return diagrams.get(source);
  }

  function showDiagram(pre, url) {
    if (!pre.isConnected || !url) return;
    const figure = document.createElement("figure");
    figure.className = "diagram";
    const image = document.createElement("img");
    image.src = url;
    image.alt = "Diagram (its source is below)";
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Diagram source";
    pre.replaceWith(figure);
    details.append(summary, pre);
    figure.append(image, details);
  }

  function placeDiagrams(target) {
    const blocks = [...target.querySelectorAll("pre > code.language-mermaid")].map((code) => code.parentElement);
    if (!blocks.length) return;
    for (const pre of blocks) {
      // Not while the reply is still arriving (a half-written diagram does not parse): once it has settled.
      Promise.resolve().then(() => {
        if (!pre.isConnected || pre.closest(".streaming, .pending")) return;
        diagram(pre.querySelector("code").textContent).then((url) => showDiagram(pre, url));
      });
    }
  }

  // After marked and DOMPurify: math into its placeholders, diagrams in place of their code blocks.
  function enhance(target, maths) {
    if (maths && maths.length) placeMath(target, maths);
    placeDiagrams(target);
  }

  window.hearthRich = {extractMath, enhance};
})();
