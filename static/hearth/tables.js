// At phone width the data tables become lists (static/hearth/hearth.css): each cell is labelled with its
// column's heading, copied here into data-label (also for rows the jobs and pulls pages add later).
(() => {
  "use strict";
  function label(table) {
    const headings = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    if (!headings.length) return;
    for (const row of table.querySelectorAll("tbody tr")) {
      let column = 0;
      for (const cell of row.cells) {
        const heading = headings[column];
        if (heading && cell.colSpan === 1 && !cell.dataset.label) cell.dataset.label = heading;
        column += cell.colSpan;
      }
    }
  }
  const labelAll = () => document.querySelectorAll("table.table").forEach(label);
  labelAll();
  const main = document.querySelector("main");
  if (main) new MutationObserver(labelAll).observe(main, {childList: true, subtree: true});
})();
