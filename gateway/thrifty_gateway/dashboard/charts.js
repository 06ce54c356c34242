/* Small hand-written SVG charts for the Thrifty dashboard (no library, nothing external). */
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";

  function el(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, attrs) {
    const node = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    node.textContent = content;
    return node;
  }

  function tip(node, content) {
    const title = el("title", {}, node);
    title.textContent = content;
  }

  function clear(container) {
    while (container.firstChild) container.removeChild(container.firstChild);
  }

  function empty(container, message) {
    clear(container);
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = message || "No data for this period yet.";
    container.appendChild(p);
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * exp >= value) return step * exp;
    return 10 * exp;
  }

  function svgRoot(container, width, height, id) {
    clear(container);
    return el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "data-chart": id },
      container);
  }

  function yAxis(svg, box, max, fmt) {
    const g = el("g", { class: "axis" }, svg);
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const y = box.top + box.height - (box.height * i) / 4;
      el("line", { x1: box.left, x2: box.left + box.width, y1: y, y2: y, class: "grid-line" }, g);
      text(g, box.left - 6, y + 4, fmt(v), { "text-anchor": "end" });
    }
  }

  function legend(svg, items, x, y) {
    const g = el("g", { class: "legend" }, svg);
    let offset = 0;
    for (const item of items) {
      el("rect", { x: x + offset, y: y - 9, width: 10, height: 10, fill: item.color }, g);
      text(g, x + offset + 14, y, item.name);
      offset += 24 + item.name.length * 6.5;
    }
  }

  /* Stacked bars: labels[i] on x, series[k].values[i] stacked (negatives shown in tooltips). */
  function stackedBars(container, opts) {
    const { labels, series, fmt } = opts;
    if (!labels.length) return empty(container);
    const W = 960, H = 300;
    const box = { left: 64, top: 28, width: W - 80, height: H - 70 };
    const totals = labels.map((_, i) =>
      series.reduce((s, ser) => s + Math.max(0, ser.values[i] || 0), 0));
    const max = niceMax(Math.max(...totals));
    const svg = svgRoot(container, W, H, opts.id || "stacked");
    yAxis(svg, box, max, fmt);
    legend(svg, series, box.left, 14);
    const slot = box.width / labels.length;
    const barW = Math.max(1, Math.min(40, slot * 0.75));
    const every = Math.max(1, Math.ceil(labels.length / 12));
    labels.forEach((label, i) => {
      let base = box.top + box.height;
      const x = box.left + i * slot + (slot - barW) / 2;
      const g = el("g", { class: "bar-group" }, svg);
      for (const ser of series) {
        const v = ser.values[i] || 0;
        if (v <= 0) continue;
        const h = (v / max) * box.height;
        base -= h;
        const rect = el("rect", { x: x, y: base, width: barW, height: Math.max(h, 0.5),
          fill: ser.color, class: "bar", "data-series": ser.name }, g);
        tip(rect, `${label} - ${ser.name}: ${fmt(v)}`);
      }
      const parts = series.map((s) => `${s.name} ${fmt(s.values[i] || 0)}`).join(", ");
      tip(g, `${label}: ${parts}`);
      if (i % every === 0) {
        text(svg, x + barW / 2, box.top + box.height + 16, opts.short ? opts.short(label) : label,
          { "text-anchor": "middle", class: "label-text" });
      }
    });
    return svg;
  }

  /* Horizontal bars: items [{label, value, note}] largest first. */
  function hbars(container, opts) {
    const items = opts.items.filter((it) => it.value > 0).slice(0, opts.limit || 8);
    if (!items.length) return empty(container, opts.emptyText);
    const W = 400, row = 24, H = items.length * row + 10;
    const left = 120, width = W - left - 70;
    const max = opts.max || niceMax(Math.max(...items.map((it) => it.value)));
    const svg = svgRoot(container, W, H, opts.id || "hbars");
    items.forEach((it, i) => {
      const y = 5 + i * row;
      text(svg, left - 8, y + 16, it.label.length > 18 ? it.label.slice(0, 17) + "…" : it.label,
        { "text-anchor": "end", class: "label-text" });
      const w = Math.max(1, (it.value / max) * width);
      const rect = el("rect", { x: left, y: y + 4, width: w, height: row - 10,
        fill: it.color || opts.color || "#2563eb", rx: 3, class: "bar" }, svg);
      tip(rect, `${it.label}: ${opts.fmt(it.value)}${it.note ? " (" + it.note + ")" : ""}`);
      text(svg, left + w + 6, y + 16, opts.fmt(it.value), { class: "label-text" });
    });
    return svg;
  }

  /* Lines over x in [x0, x1] (epoch ms) with optional horizontal limit lines. */
  function lines(container, opts) {
    const W = 960, H = 220;
    const box = { left: 64, top: 24, width: W - 90, height: H - 56 };
    /* Scale to the data and the nearest limit; limits far above it are left out (the caller
       names them in its heading) so that the spend line stays readable. */
    const all = opts.series.flatMap((s) => s.points.map((p) => p[1]));
    const top = Math.max(0, ...all);
    const lowest = Math.min(...(opts.limits || []).map((l) => l.value), Infinity);
    const max = niceMax(Math.max(top, Number.isFinite(lowest) ? lowest : 0) * 1.1);
    const shown = (opts.limits || []).filter((l) => l.value <= max);
    const svg = svgRoot(container, W, H, opts.id || "lines");
    yAxis(svg, box, max, opts.fmt);
    const x0 = opts.x0, x1 = opts.x1 > opts.x0 ? opts.x1 : opts.x0 + 1;
    const sx = (t) => box.left + ((t - x0) / (x1 - x0)) * box.width;
    const sy = (v) => box.top + box.height - (v / max) * box.height;
    for (const limit of shown) {
      el("line", { x1: box.left, x2: box.left + box.width, y1: sy(limit.value),
        y2: sy(limit.value), stroke: limit.color, "stroke-dasharray": "6 4",
        class: "limit" }, svg);
      text(svg, box.left + box.width - 4, sy(limit.value) - 4,
        `${limit.name} ${opts.fmt(limit.value)}`,
        { "text-anchor": "end", class: "label-text" });
    }
    for (const ser of opts.series) {
      if (!ser.points.length) continue;
      const d = ser.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`)
        .join(" ");
      const path = el("path", { d: d, fill: "none", stroke: ser.color, "stroke-width": 2,
        class: "series" }, svg);
      tip(path, `${ser.name}: ${opts.fmt(ser.points[ser.points.length - 1][1])}`);
    }
    const ticks = opts.ticks || [];
    ticks.forEach((t, i) => {
      const anchor = i === 0 ? "start" : i === ticks.length - 1 ? "end" : "middle";
      text(svg, sx(t[0]), box.top + box.height + 16, t[1],
        { "text-anchor": anchor, class: "label-text" });
    });
    legend(svg, opts.series, box.left, 14);
    return svg;
  }

  window.ThriftyCharts = { stackedBars: stackedBars, hbars: hbars, lines: lines, empty: empty };
})();
