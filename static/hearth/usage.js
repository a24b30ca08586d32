// The usage page's charts, drawn by uPlot (static/vendor/uplot) from the page's JSON (#usage-data).
(function () {
  "use strict";
  const source = document.getElementById("usage-data");
  if (!source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const COLORS = ["#3b6fd8", "#d8643b", "#2f9e6a", "#a04bc8", "#c8a23b", "#3bb5c8", "#c83b7a", "#6a7a2f", "#888888"];
  const days = data.days.map((day) => Date.parse(day + "T00:00:00Z") / 1000);
  const number = (value) => value == null ? "" : Math.round(value).toLocaleString();
  // Whole-number steps only: counts of tokens and requests have no fractions.
  const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6,
                 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9, 2e9, 5e9, 1e10];

  function width(element) {
    return Math.max(260, element.clientWidth || element.parentElement.clientWidth || 600);
  }

  function draw(element, x, series, options) {
    const chart = new uPlot(Object.assign({
      width: width(element),
      height: 220,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      series: [{}].concat(series.map((line, i) => Object.assign({
        label: line.label, stroke: COLORS[i % COLORS.length], width: 2, value: (u, v) => number(v),
      }, line.options || {}))),
      axes: [{}, {values: (u, ticks) => ticks.map(number), size: 60, incrs: WHOLE}],
    }, options || {}), [x].concat(series.map((line) => line.values)), element);
    new ResizeObserver(() => chart.setSize({width: width(element), height: 220})).observe(element.parentElement);
    return chart;
  }

  for (const element of document.querySelectorAll(".usage-chart")) {
    const kind = element.dataset.chart;
    if (data.tokens[kind]) {
      if (!data.tokens[kind].length) {
        element.textContent = "None in this period.";
        continue;
      }
      draw(element, days, data.tokens[kind]);
    } else if (kind === "requests") {
      draw(element, days, [{label: "requests", values: data.requests},
                           {label: "failed", values: data.failures}]);
    } else if (kind === "hours") {
      const hours = Array.from({length: 24}, (_, i) => i);
      const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({size: [0.7]}) : undefined;
      draw(element, hours, [{label: "requests", values: data.hours,
                             options: {paths: bars, fill: COLORS[0] + "99", points: {show: false}}}],
           {scales: {x: {time: false}}, axes: [{values: (u, ticks) => ticks.map((t) => t + ":00")},
                                                {values: (u, ticks) => ticks.map(number), size: 60, incrs: WHOLE}]});
    }
  }
})();
