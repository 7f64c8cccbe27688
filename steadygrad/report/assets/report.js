/* steadygrad's interactive report: draws the data embedded in the page with uPlot.
   Every name that comes from a run is set as text (textContent), never as HTML. */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("sg-data").textContent);
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const SEVERITY = { info: "#1565c0", warning: "#e08a00", critical: "#c62828" };
  const DPR = window.devicePixelRatio || 1;
  const charts = [];
  let syncing = false;
  const ZOOM_KEY = "steadygrad-zoom:" + document.title;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v == null) return "-";
    if (!isFinite(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : String(+v.toPrecision(5));
  }
  function bytes(s) {
    const b = atob(s), u = new Uint8Array(b.length);
    for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
    return u;
  }
  function markColor(m) {
    if (m.type === "finding") return SEVERITY[m.severity] || "#555";
    return m.type === "action" ? "#9c27b0" : "#c62828";
  }
  function markLabel(m) {
    const run = D.runs.length > 1 ? D.runs[m.run].name + ": " : "";
    const where = m.where ? " in " + m.where : "";
    const sev = m.severity ? " [" + m.severity + "]" : "";
    return run + "step " + m.step + ": " + m.type + " " + m.kind + where + sev +
      (m.text ? " (" + m.text + ")" : "");
  }
  const allMarks = [];
  D.runs.forEach((r) => r.marks.forEach((m) => allMarks.push(m)));

  // -- one chart: uPlot with a hover tooltip, marks on the time axis, synced zoom ----------
  function tooltipPlugin(tip) {
    return {
      hooks: {
        setCursor: [(u) => {
          const i = u.cursor.idx;
          if (i == null || u.cursor.left < 0) { tip.style.display = "none"; return; }
          tip.textContent = "";
          tip.appendChild(el("div", "sg-tip-step", "step " + u.data[0][i]));
          for (let s = 1; s < u.series.length; s++) {
            const v = u.data[s][i];
            if (!u.series[s].show || v == null) continue;
            const row = el("div", null, u.series[s].label + " = " + fmt(v));
            row.style.color = u.series[s]._stroke || "#222";
            tip.appendChild(row);
          }
          const near = nearMarks(u, u.cursor.left);
          near.forEach((m) => tip.appendChild(el("div", "sg-tip-mark", markLabel(m))));
          tip.style.display = "block";
          const w = u.over.clientWidth;
          const left = u.cursor.left + 12;
          tip.style.left = (left + 220 > w ? Math.max(0, u.cursor.left - 230) : left) + "px";
          tip.style.top = Math.max(0, u.cursor.top - 10) + "px";
        }],
      },
    };
  }
  function nearMarks(u, left) {
    return u._marks.filter((m) => Math.abs(u.valToPos(m.step, "x") - left) <= 4);
  }
  function marksPlugin() {
    return {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx, b = u.bbox;
          ctx.save();
          for (const m of u._marks) {
            const x = Math.round(u.valToPos(m.step, "x", true));
            if (x < b.left || x > b.left + b.width) continue;
            ctx.strokeStyle = ctx.fillStyle = markColor(m);
            ctx.globalAlpha = 0.6;
            ctx.lineWidth = DPR;
            ctx.setLineDash(m.type === "action" ? [4 * DPR, 3 * DPR] : []);
            ctx.beginPath(); ctx.moveTo(x, b.top); ctx.lineTo(x, b.top + b.height); ctx.stroke();
            ctx.globalAlpha = 1;
            ctx.beginPath(); ctx.moveTo(x - 4 * DPR, b.top); ctx.lineTo(x + 4 * DPR, b.top);
            ctx.lineTo(x, b.top + 6 * DPR); ctx.closePath(); ctx.fill();
          }
          ctx.restore();
        }],
        setScale: [(u, key) => {
          if (key !== "x" || syncing) return;
          syncing = true;
          const min = u.scales.x.min, max = u.scales.x.max;
          charts.forEach((c) => { if (c !== u) c.setScale("x", { min, max }); });
          try { sessionStorage.setItem(ZOOM_KEY, JSON.stringify([min, max])); } catch (e) { /* none */ }
          syncing = false;
        }],
      },
    };
  }
  function makeChart(parent, data, series, scale, marks, bands) {
    const box = el("div", "sg-chart");
    parent.appendChild(box);
    const tip = el("div", "sg-tip");
    const width = Math.max(320, Math.min(1100, parent.clientWidth || 900));
    const opts = {
      width: width, height: 240, bands: bands || [],
      plugins: [tooltipPlugin(tip), marksPlugin()],
      cursor: { drag: { x: true, y: false }, sync: { key: "steadygrad" } },
      scales: { x: { time: false }, y: scale === "log" ? { distr: 3 } : {} },
      axes: [{ label: "step" }, {}],
      legend: { live: false },
      series: [{ label: "step" }].concat(series),
    };
    const u = new uPlot(opts, data, box);
    u._marks = marks;
    u.over.appendChild(tip);
    u.over.addEventListener("click", (ev) => {
      const near = nearMarks(u, ev.offsetX);
      if (near.length) showMark(near[0], false);
    });
    u.over.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    charts.push(u);
    return u;
  }

  // aligned data for uPlot: one x array, one y array per series (null where a series has none)
  function align(list, positive) {
    const xs = new Set();
    list.forEach((s) => s.x.forEach((v) => xs.add(v)));
    const x = Array.from(xs).sort((a, b) => a - b);
    const pos = new Map(x.map((v, i) => [v, i]));
    const ys = list.map((s) => {
      const y = new Array(x.length).fill(null);
      s.x.forEach((v, i) => {
        const value = s.y[i];
        y[pos.get(v)] = positive && !(value > 0) ? null : value;
      });
      return y;
    });
    return [x].concat(ys);
  }

  // -- the panels of global series -------------------------------------------------------
  const ORDER = ["loss", "lr", "grad_norm", "param_norm", "update_ratio", "attention",
    "output_logits", "sharpness", "preconditioned_sharpness", "hessian_trace", "plasticity",
    "amp", "time", "cost"];
  function drawPanels(root) {
    const panels = new Map();
    D.runs.forEach((r) => r.series.forEach((s) => {
      if (!panels.has(s.panel)) panels.set(s.panel, []);
      panels.get(s.panel).push(s);
    }));
    const names = Array.from(panels.keys()).sort((a, b) => {
      const ia = ORDER.indexOf(a), ib = ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : a > b ? 1 : 0);
    });
    for (const name of names) {
      const list = panels.get(name);
      if (!list.some((s) => s.x.length)) continue;
      const log = list.every((s) => s.scale === "log");
      const section = el("section", "sg-panel");
      section.dataset.panel = name;
      section.appendChild(el("h3", null, name + (log ? " (log scale)" : "")));
      const docs = Array.from(new Set(list.filter((s) => s.doc).map((s) => s.key + ": " + s.doc)));
      if (docs.length) section.appendChild(el("p", "sg-doc", docs.join("; ")));
      root.appendChild(section);
      const series = list.map((s, i) => ({
        label: (D.runs.length > 1 ? D.runs[s.run].name + ": " : "") + s.key,
        stroke: COLORS[i % COLORS.length],
        width: 1.25,
        dash: s.limit ? [6, 4] : undefined,
        spanGaps: true, // a metric recorded every N steps is one line; NaN steps are marked
        points: { show: s.x.length < 80 },
      }));
      series.forEach((s) => { s._stroke = s.stroke; });
      const runs = new Set(list.map((s) => s.run));
      const marks = allMarks.filter((m) => runs.has(m.run));
      makeChart(section, align(list, log), series, log ? "log" : "linear", marks);
    }
  }

  // -- per-layer families: a layer picker, the picked layers' min/max envelopes, a heatmap ---
  function drawFamily(root, run, fam, runIndex) {
    const n = fam.members.length, bins = fam.bins;
    const low = new Float32Array(bytes(fam.low).buffer);
    const high = new Float32Array(bytes(fam.high).buffer);
    const bad = bytes(fam.bad);
    const log = fam.scale === "log";
    const section = el("section", "sg-family");
    section.dataset.family = fam.family;
    const head = (D.runs.length > 1 ? run.name + ": " : "") + fam.family + " per layer (" + n +
      " tensors" + (log ? ", log scale" : "") + ")";
    section.appendChild(el("h3", null, head));
    if (fam.doc) section.appendChild(el("p", "sg-doc", fam.doc));
    root.appendChild(section);
    const peak = new Float64Array(n);
    for (let r = 0; r < n; r++) {
      let m = -Infinity;
      for (let c = 0; c < bins; c++) { const v = high[r * bins + c]; if (v > m) m = v; }
      peak[r] = m;
    }
    const named = new Set(run.marks.filter((m) => m.where).map((m) => m.where));
    const byPeak = Array.from({ length: n }, (_, i) => i).sort((a, b) => peak[b] - peak[a]);
    const picked = new Set(byPeak.filter((i) => named.has(fam.members[i])).slice(0, 3));
    for (const i of byPeak) { if (picked.size >= 4) break; picked.add(i); }

    const controls = el("div", "sg-picker");
    const filter = el("input");
    filter.type = "search"; filter.placeholder = "filter layers"; filter.className = "sg-filter";
    const select = el("select");
    select.multiple = true; select.size = Math.min(8, n); select.className = "sg-layers";
    select.setAttribute("aria-label", "layers of " + fam.family);
    fam.members.forEach((name, i) => {
      const o = el("option", null, name);
      o.value = String(i); o.selected = picked.has(i);
      select.appendChild(o);
    });
    filter.addEventListener("input", () => {
      const q = filter.value.toLowerCase();
      for (const o of select.options) o.hidden = q && !o.textContent.toLowerCase().includes(q);
    });
    controls.appendChild(filter); controls.appendChild(select);
    controls.appendChild(el("span", "sg-hint", "pick layers (ctrl/shift-click); " +
      "lines: highest value per step range, shaded down to the lowest"));
    section.appendChild(controls);
    const chartBox = el("div");
    section.appendChild(chartBox);
    const x = Array.from({ length: bins }, (_, c) => fam.first + c * fam.width);
    let chart = null;
    function redraw() {
      if (chart) { charts.splice(charts.indexOf(chart), 1); chart.destroy(); chartBox.textContent = ""; }
      const rows = Array.from(select.selectedOptions).map((o) => +o.value).slice(0, 12);
      const data = [x], series = [], bands = [];
      rows.forEach((r, k) => {
        const color = COLORS[k % COLORS.length];
        for (const arr of [high, low]) {
          const y = new Array(bins);
          for (let c = 0; c < bins; c++) {
            const v = arr[r * bins + c];
            y[c] = isNaN(v) || (log && !(v > 0)) ? null : v;
          }
          data.push(y);
        }
        series.push({ label: fam.members[r] + " (max)", stroke: color, width: 1.25, _stroke: color,
          spanGaps: true });
        series.push({ label: fam.members[r] + " (min)", stroke: color, width: 0.5, _stroke: color,
          spanGaps: true });
        bands.push({ series: [1 + 2 * k, 2 + 2 * k], fill: color + "22" });
      });
      const marks = run.marks.filter((m) => !m.where || rows.some((r) => fam.members[r] === m.where));
      chart = makeChart(chartBox, data, series, log ? "log" : "linear", marks, bands);
      restoreZoom(chart);
    }
    select.addEventListener("change", redraw);
    redraw();
    drawHeatmap(section, fam, run, low, high, bad, log, (r) => {
      select.options[r].selected = true;
      redraw();
    });
  }

  function viridis(t) {
    const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i;
    return stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  }

  function drawHeatmap(section, fam, run, low, high, bad, log, onPick) {
    const n = fam.members.length, bins = fam.bins;
    const rowsShown = Math.min(n, 600);
    const group = n / rowsShown; // data rows per drawn row (max-pooled: a hot layer stays hot)
    const value = (v) => (log ? (v > 0 ? Math.log10(v) : NaN) : v);
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < high.length; i++) {
      const v = value(high[i]);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    // columns holding a real non-finite event: a NaN there is red; elsewhere it is undefined
    // (0/0 of a zero-initialised bias), drawn grey
    const eventCol = new Uint8Array(bins);
    run.marks.forEach((m) => {
      if (m.type === "event" || (m.type === "finding" && m.kind.indexOf("nonfinite") === 0)) {
        const c = Math.floor((m.step - fam.first) / fam.width);
        if (c >= 0 && c < bins) eventCol[c] = 1;
      }
    });
    const img = new ImageData(bins, rowsShown);
    for (let y = 0; y < rowsShown; y++) {
      const r0 = Math.floor(y * group), r1 = Math.max(r0 + 1, Math.floor((y + 1) * group));
      for (let c = 0; c < bins; c++) {
        let v = -Infinity, nonfinite = 0;
        for (let r = r0; r < r1; r++) {
          const w = value(high[r * bins + c]);
          if (w > v) v = w;
          nonfinite += bad[r * bins + c];
        }
        const p = 4 * (y * bins + c);
        let rgb;
        if (nonfinite && eventCol[c]) rgb = [214, 39, 40];
        else if (v === -Infinity) rgb = nonfinite ? [190, 190, 190] : [245, 245, 245];
        else rgb = viridis(hi > lo ? (v - lo) / (hi - lo) : 0.5);
        img.data[p] = rgb[0]; img.data[p + 1] = rgb[1]; img.data[p + 2] = rgb[2]; img.data[p + 3] = 255;
      }
    }
    const wrap = el("div", "sg-heat");
    const canvas = el("canvas");
    const cssW = Math.max(320, Math.min(1000, section.clientWidth || 900));
    const cssH = Math.max(60, Math.min(600, rowsShown * 8));
    canvas.width = cssW * DPR; canvas.height = cssH * DPR;
    canvas.style.width = cssW + "px"; canvas.style.height = cssH + "px";
    const off = document.createElement("canvas");
    off.width = bins; off.height = rowsShown;
    off.getContext("2d").putImageData(img, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    const tip = el("div", "sg-tip");
    wrap.appendChild(canvas); wrap.appendChild(tip);
    const scale = log ? "log10 " : "";
    wrap.appendChild(el("div", "sg-doc", "heatmap: " + scale + fam.family + " (highest per step " +
      "range), steps " + fam.first + " to " + (fam.first + bins * fam.width - 1) + "; colour " +
      fmt(lo) + " (dark) to " + fmt(hi) + " (yellow); red: non-finite at a non-finite event; " +
      "grey: undefined (e.g. 0/0). Click a row to pick that layer."));
    section.appendChild(wrap);
    function cell(ev) {
      const c = Math.min(bins - 1, Math.floor(ev.offsetX / cssW * bins));
      const y = Math.min(rowsShown - 1, Math.floor(ev.offsetY / cssH * rowsShown));
      const r0 = Math.floor(y * group), r1 = Math.max(r0 + 1, Math.floor((y + 1) * group));
      let r = r0;
      for (let k = r0; k < r1; k++) if (value(high[k * bins + c]) > value(high[r * bins + c])) r = k;
      return { r, c };
    }
    canvas.addEventListener("mousemove", (ev) => {
      const { r, c } = cell(ev);
      const from = fam.first + c * fam.width, to = from + fam.width - 1;
      const i = r * bins + c;
      tip.textContent = "";
      tip.appendChild(el("div", "sg-tip-step", fam.members[r]));
      tip.appendChild(el("div", null, "steps " + from + "-" + to));
      tip.appendChild(el("div", null, "max = " + fmt(high[i]) + ", min = " + fmt(low[i])));
      if (bad[i]) tip.appendChild(el("div", "sg-tip-mark", bad[i] + " non-finite value(s)"));
      tip.style.display = "block";
      tip.style.left = Math.min(ev.offsetX + 12, cssW - 200) + "px";
      tip.style.top = ev.offsetY + 12 + "px";
    });
    canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    canvas.addEventListener("click", (ev) => onPick(cell(ev).r));
  }

  // -- findings and actions: a click zooms every chart to the step -------------------------
  function zoomTo(step) {
    let lo = Infinity, hi = -Infinity;
    D.runs.forEach((r) => { lo = Math.min(lo, r.first); hi = Math.max(hi, r.last); });
    const half = Math.max(5, (hi - lo) / 40);
    if (charts.length) charts[0].setScale("x", { min: step - half, max: step + half });
  }
  function showMark(m, zoom) {
    const box = document.getElementById("sg-detail");
    box.textContent = markLabel(m);
    box.style.borderColor = markColor(m);
    box.style.display = "block";
    document.querySelectorAll("tr.sg-selected").forEach((t) => t.classList.remove("sg-selected"));
    const row = document.querySelector('tr[data-mark="' + allMarks.indexOf(m) + '"]');
    if (row) row.classList.add("sg-selected");
    if (zoom) zoomTo(m.step);
  }
  function drawMarkTable(root) {
    const shown = allMarks.filter((m) => m.type !== "event").slice(0, 2000);
    const events = allMarks.filter((m) => m.type === "event").slice(0, 200);
    const list = shown.concat(events).sort((a, b) => a.step - b.step);
    if (!list.length) return;
    root.appendChild(el("h2", null, "Findings, actions and events on the time axis"));
    root.appendChild(el("p", "sg-doc", "Click a row to zoom every chart to its step; click a " +
      "mark on a chart to read it."));
    const table = el("table", "sg-marks");
    const head = el("tr");
    ["step", "run", "type", "kind", "where", "severity", "detail"].forEach((h) => head.appendChild(el("th", null, h)));
    table.appendChild(head);
    for (const m of list) {
      const tr = el("tr");
      tr.dataset.mark = String(allMarks.indexOf(m));
      [m.step, D.runs[m.run].name, m.type, m.kind, m.where || "", m.severity || "", m.text]
        .forEach((v, i) => {
          const td = el("td", i === 5 ? m.severity : null, String(v));
          tr.appendChild(td);
        });
      tr.style.borderLeft = "4px solid " + markColor(m);
      tr.addEventListener("click", () => showMark(m, true));
      table.appendChild(tr);
    }
    root.appendChild(table);
  }

  function restoreZoom(u) {
    try {
      const z = JSON.parse(sessionStorage.getItem(ZOOM_KEY) || "null");
      if (z && isFinite(z[0]) && isFinite(z[1])) u.setScale("x", { min: z[0], max: z[1] });
    } catch (e) { /* storage unavailable: start unzoomed */ }
  }

  function main() {
    const root = document.getElementById("sg-charts");
    const reset = document.getElementById("sg-reset");
    reset.addEventListener("click", () => {
      try { sessionStorage.removeItem(ZOOM_KEY); } catch (e) { /* none */ }
      let lo = Infinity, hi = -Infinity;
      D.runs.forEach((r) => { lo = Math.min(lo, r.first); hi = Math.max(hi, r.last); });
      if (charts.length) charts[0].setScale("x", { min: lo, max: hi });
    });
    drawPanels(root);
    const fams = document.getElementById("sg-families");
    D.runs.forEach((r, i) => r.families.forEach((f) => drawFamily(fams, r, f, i)));
    drawMarkTable(document.getElementById("sg-marks"));
    if (charts.length) restoreZoom(charts[0]);
    window.steadygradCharts = charts; // for the browser test and the curious reader
    document.body.dataset.ready = "1";
    if (D.refresh) setTimeout(() => location.reload(), D.refresh * 1000);
  }
  main();
})();
