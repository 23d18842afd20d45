// realtime-batch dashboard: polls /api/status every second and redraws the page.
// Plain DOM and SVG, no library; every text goes through textContent (never innerHTML).
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  for (const values of rows) {
    const tr = document.createElement("tr");
    for (const [text, cls] of values) cell(tr, text, cls);
    body.appendChild(tr);
  }
}

function ago(then, now) {
  return then ? Math.max(0, now - then).toFixed(1) + " s ago" : "—";
}

function uptime(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  const s = Math.floor(seconds);
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m " + (s % 60) + "s";
}

function svgEl(name, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// One polyline per queue over the sampled history; y from 0 to the largest value.
function chart(svgId, history, pick, queues) {
  const svg = document.getElementById(svgId);
  svg.replaceChildren();
  const W = 600, H = 160, pad = 18;
  let max = 0;
  for (const p of history) for (const q of queues) {
    const v = p.queues[q] ? pick(p.queues[q]) : null;
    if (v !== null && v !== undefined && v > max) max = v;
  }
  svg.appendChild(svgEl("line", {x1: 0, y1: H - pad, x2: W, y2: H - pad, stroke: "#999"}));
  const label = svgEl("text", {x: 4, y: 12, "font-size": 11, fill: "#555"});
  label.textContent = "max " + (max >= 100 ? max.toFixed(0) : max.toFixed(2));
  svg.appendChild(label);
  if (history.length < 2) return;
  const t0 = history[0].t, t1 = history[history.length - 1].t, span = Math.max(t1 - t0, 1);
  queues.forEach((q, i) => {
    const points = [];
    for (const p of history) {
      const v = p.queues[q] ? pick(p.queues[q]) : null;
      if (v === null || v === undefined) continue;
      const x = ((p.t - t0) / span) * W;
      const y = H - pad - (max > 0 ? (v / max) * (H - 2 * pad) : 0);
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    }
    if (!points.length) return;
    const color = COLORS[i % COLORS.length];
    svg.appendChild(svgEl("polyline", {points: points.join(" "), fill: "none",
                                       stroke: color, "stroke-width": 1.5}));
    for (const point of points) {  // a lone sample (e.g. one burst) shows as a dot
      const [x, y] = point.split(",");
      svg.appendChild(svgEl("circle", {cx: x, cy: y, r: 2, fill: color}));
    }
    const legend = svgEl("text", {x: W - 150, y: 12 + 12 * i, "font-size": 11, fill: color});
    legend.textContent = q;
    svg.appendChild(legend);
  });
}

function failureBlock(title, detail, traceback) {
  const div = document.createElement("div");
  div.className = "failure";
  const head = document.createElement("div");
  const strong = document.createElement("strong");
  strong.textContent = title;
  head.appendChild(strong);
  div.appendChild(head);
  const p = document.createElement("div");
  p.textContent = detail;
  div.appendChild(p);
  if (traceback) {
    const pre = document.createElement("pre");
    pre.textContent = traceback;
    div.appendChild(pre);
  }
  return div;
}

function render(data) {
  const error = document.getElementById("error");
  error.hidden = !data.error;
  error.textContent = data.error || "";
  const stats = data.stats;
  if (!stats) return;
  const now = stats.taken_at;
  document.getElementById("summary").textContent =
    stats.transport + " " + stats.url + " · up " + uptime(stats.uptime) + " · " +
    stats.engines.length + " engine(s) · " + stats.queues.length + " queue(s)";
  fill("engines", stats.engines.map(e => [
    [e.id], [e.host], [e.state, "state-" + e.state], [e.task || ""],
    [e.tasks_done, "num"], [e.tasks_failed, "num"], [e.worker_restarts, "num"],
    [e.busy_ratio === null ? null : Math.round(e.busy_ratio * 100) + "%", "num"],
    [ago(e.last_seen, now)],
  ]));
  fill("queues", stats.queues.map(q => [
    [q.name], [q.depth, "num"], [q.leased, "num"], [q.dead_letter, "num"],
    [q.groups, "num"], [q.sent, "num"], [q.completed, "num"],
  ]));
  const names = stats.queues.map(q => q.name);
  chart("throughput", data.history, v => v.done, names);
  chart("latency", data.history, v => (v.latency === null ? null : v.latency * 1000), names);
  const failures = document.getElementById("failures");
  failures.replaceChildren();
  for (const f of data.failures) {
    const when = new Date(f.at * 1000).toLocaleTimeString();
    failures.appendChild(failureBlock(f.type + ": " + f.message,
      "task " + f.task + " on " + f.engine + " at " + when, f.traceback));
  }
  if (!data.failures.length) {
    const p = document.createElement("p");
    p.className = "dim";
    p.textContent = "none reported";
    failures.appendChild(p);
  }
  const dead = document.getElementById("dead-letters");
  dead.replaceChildren();
  for (const [queue, letters] of Object.entries(data.dead_letters)) {
    for (const d of letters) {
      dead.appendChild(failureBlock(queue + ": " + d.reason,
        "task " + (d.task || "?") + " (message " + d.id + ") " + d.description, ""));
    }
  }
  if (!dead.childElementCount) {
    const p = document.createElement("p");
    p.className = "dim";
    p.textContent = "none";
    dead.appendChild(p);
  }
  document.body.dataset.loaded = "1";
}

async function refresh() {
  try {
    const response = await fetch("/api/status", {cache: "no-store"});
    render(await response.json());
  } catch (err) {
    const error = document.getElementById("error");
    error.hidden = false;
    error.textContent = "dashboard server unreachable: " + err;
  }
}

refresh();
setInterval(refresh, 1000);
