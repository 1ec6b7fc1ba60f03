// minivgg lab: the page. Everything it does goes through the HTTP API (docs/serve.md):
// the options and their defaults come from /api/info (the CLI's own parsers).
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;
let current = null;          // the job shown: {id, rows: [], imageKey, state}
let pollTimer = null;
const SERIES = ["total", "content", "style", "tv", "alpha", "activation"];
const COLORS = {total: "#111", content: "#1f77b4", style: "#d62728", tv: "#2ca02c", alpha: "#9467bd",
                activation: "#ff7f0e"};
const SUGGESTED = {content: "sample:chelsea", style: "sample:immunohistochemistry", image: "sample:chelsea",
                   init: null};

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  const ctype = r.headers.get("content-type") || "";
  const body = ctype.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
  return body;
}

// ------------------------------------------------------------------ the form
function defaultHint(opt) {
  const m = /\(default ([^)]*)\)/.exec(opt.help || "");
  return m ? m[1] : "";
}

function layerNames() { return INFO.archs[archValue()].layers; }
// the form starts on the arch the server's weights hold (INFO.default_arch), as the CLI does without --arch
function archValue() { const a = document.querySelector('[data-opt="arch"]'); return a && a.value ? a.value : INFO.default_arch; }

function showWeights() {
  const arch = archValue();
  const src = INFO.archs[arch].weights;
  const w = $("weights");
  const what = src === null ? `none: ${INFO.archs[arch].note} (choose arch ${INFO.default_arch})`
    : src === "random" ? "random (no pretrained file found)" : src;
  w.textContent = `weights in use: ${arch}, ${what}`;
  w.classList.toggle("random", src === "random" || src === null);
}

function imagePicker(opt) {
  const box = el("div", {class: "image-pick", "data-opt": opt.name, "data-kind": "image"});
  const sel = el("select", {"data-role": "choice", "aria-label": opt.name});
  if (!opt.required) sel.append(el("option", {value: "", text: "(default)"}));
  if (opt.name === "init") for (const k of ["noise", "content", "style"]) sel.append(el("option", {value: k, text: k}));
  for (const s of INFO.samples) sel.append(el("option", {value: "sample:" + s, text: "sample: " + s}));
  sel.append(el("option", {value: "upload", text: "upload a file…"}));
  const sugg = SUGGESTED[opt.name];
  if (opt.required && sugg) sel.value = sugg;
  const file = el("input", {type: "file", accept: "image/*", "data-role": "file", hidden: ""});
  if (opt.multiple) file.multiple = true;
  const thumb = el("img", {alt: ""});
  const update = () => {
    file.hidden = sel.value !== "upload";
    if (sel.value === "upload" && file.files.length) thumb.src = URL.createObjectURL(file.files[0]);
    else thumb.removeAttribute("src");
  };
  sel.addEventListener("change", update);
  file.addEventListener("change", update);
  box.append(el("label", {class: "row", title: opt.help, text: `${opt.name}${opt.required ? " *" : ""}`}, sel),
             file, thumb, el("div", {class: "help", text: opt.help}));
  return box;
}

function layerPicker(opt) {
  const box = el("div", {"data-opt": opt.name, "data-kind": opt.kind, title: opt.help});
  const defaults = String(opt.default || "").split(",").filter(Boolean);
  box.append(el("div", {class: "row", text: opt.name + (opt.kind === "layer" ? " (one)" : " (any)")}));
  const grid = el("div", {class: "layers"});
  if (opt.kind === "layer" && !opt.default) {
    grid.append(el("label", {}, el("input", {type: "radio", name: "L-" + opt.name, value: "", checked: ""}), "none"));
  }
  for (const name of layerNames()) {
    const input = el("input", {type: opt.kind === "layer" ? "radio" : "checkbox", name: "L-" + opt.name, value: name});
    if (defaults.includes(name)) input.checked = true;
    grid.append(el("label", {}, input, name));
  }
  box.append(grid);
  box.dataset.default = defaults.join(",");
  return box;
}

function valueInput(opt) {
  let input;
  if (opt.kind === "flag") {
    input = el("input", {type: "checkbox", "data-opt": opt.name, "data-kind": "flag"});
    input.checked = !!opt.default;
  } else if (opt.kind === "choice") {
    input = el("select", {"data-opt": opt.name, "data-kind": "choice"});
    for (const c of opt.choices) input.append(el("option", {value: c, text: c}));
    input.value = opt.default;
  } else {
    input = el("input", {type: "text", "data-opt": opt.name, "data-kind": "value",
                         placeholder: opt.default === null ? (defaultHint(opt) || "default") : ""});
    if (opt.default !== null) input.value = opt.default;
  }
  input.dataset.default = opt.default === null ? "" : String(opt.default);
  return el("label", {class: "row", title: opt.help}, opt.name, input);
}

function buildForm() {
  const method = $("method").value;
  const opts = INFO.options[method];
  const keepArch = archValue();
  const box = $("options");
  box.replaceChildren();
  const groups = new Map();
  for (const opt of opts) {
    if (!groups.has(opt.group)) groups.set(opt.group, []);
    groups.get(opt.group).push(opt);
  }
  for (const [title, list] of groups) {
    const sec = el("details", {class: "card", open: ""});
    sec.append(el("summary", {text: title}));
    for (const opt of list) {
      if (opt.kind === "image") sec.append(imagePicker(opt));
      else if (opt.kind === "layer" || opt.kind === "layers") sec.append(layerPicker(opt));
      else sec.append(valueInput(opt));
    }
    box.append(sec);
  }
  const arch = document.querySelector('[data-opt="arch"]');
  if (arch) {
    if (INFO.archs[keepArch]) arch.value = keepArch;
    arch.addEventListener("change", () => { showWeights(); rebuildLayers(); });
  }
  showWeights();
  $("method-help").textContent = methodHelp(method);
}

function rebuildLayers() {
  const method = $("method").value;
  for (const opt of INFO.options[method]) {
    if (opt.kind !== "layer" && opt.kind !== "layers") continue;
    const old = document.querySelector(`[data-opt="${opt.name}"]`);
    old.replaceWith(layerPicker(opt));
  }
}

function methodHelp(m) {
  return {style: "Gatys et al. 2016: a content image painted in the style of the style image(s).",
          texture: "Gatys et al. 2015: a new texture with the source's Gram matrices.",
          invert: "Mahendran & Vedaldi 2015: the image reconstructed from one layer's response.",
          dream: "DeepDream: enhance what a layer (or one channel) sees, over octaves.",
          visualize: "Activation maximization: the image that most excites a channel (or a class).",
          atlas: "What each layer keeps: content, texture and style per layer on one sheet (many runs)."}[m] || "";
}

function formData() {
  const fd = new FormData();
  const method = $("method").value;
  fd.append("method", method);
  for (const node of $("options").querySelectorAll("[data-opt]")) {
    const name = node.dataset.opt, kind = node.dataset.kind;
    if (kind === "image") {
      const sel = node.querySelector('[data-role="choice"]'), file = node.querySelector('[data-role="file"]');
      if (sel.value === "upload") {
        if (!file.files.length) throw new Error(`${name}: choose a file to upload`);
        for (const f of file.files) fd.append(name, f, f.name);
      } else if (sel.value) fd.append(name, sel.value);
    } else if (kind === "layer" || kind === "layers") {
      const picked = [...node.querySelectorAll("input:checked")].map((i) => i.value).filter(Boolean);
      const v = picked.join(",");
      if (v !== node.dataset.default) {
        if (!v && kind === "layers") throw new Error(`${name}: pick at least one layer`);
        if (v) fd.append(name, v);
      }
    } else if (kind === "flag") {
      if (node.checked !== (node.dataset.default === "true")) fd.append(name, node.checked ? "true" : "false");
    } else {
      const v = node.value.trim();
      if (v !== node.dataset.default && v !== "") fd.append(name, v);
    }
  }
  return fd;
}

async function submit(ev) {
  ev.preventDefault();
  $("form-error").textContent = "";
  $("start").disabled = true;
  try {
    const st = await api("/api/jobs", {method: "POST", body: formData()});
    openJob(st.id);
    refreshList();
  } catch (e) {
    $("form-error").textContent = e.message;
  } finally {
    $("start").disabled = false;
  }
}

// ------------------------------------------------------------------ a job
function openJob(id) {
  current = {id, rows: [], imageKey: null, state: null};
  location.hash = "job=" + id;
  $("live-image").removeAttribute("src");
  drawChart([]);
  poll();
}

async function poll() {
  clearTimeout(pollTimer);
  if (!current) return;
  const job = current;
  try {
    const st = await api(`/api/jobs/${job.id}`);
    const r = await api(`/api/jobs/${job.id}/rows?since=${job.rows.length}`);
    if (job !== current) return;
    job.rows.push(...r.rows);
    job.state = st.state;
    showStatus(st);
    drawChart(job.rows);
    const final = ["done", "cancelled", "failed"].includes(st.state);
    const key = `${st.image_version}-${st.state}`;
    if (key !== job.imageKey && (st.image_version > 0 || final)) {
      job.imageKey = key;
      const src = `/api/jobs/${job.id}/image?v=${key}`;
      const probe = new Image();  // swap only once loaded: no flicker, no broken image
      probe.onload = () => {
        if (job === current) { const img = $("live-image"); img.src = src; img.dataset.version = st.image_version; }
      };
      probe.src = src;
    }
    if (final) { refreshList(); return; }
  } catch (e) {
    $("job-message").textContent = e.message;
  }
  pollTimer = setTimeout(poll, 400);
}

function fmt(v) {
  if (typeof v !== "number") return String(v);
  return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toPrecision(4);
}

function showStatus(st) {
  $("job-title").textContent = `${st.method} · ${st.id}`;
  const s = $("job-state");
  s.textContent = st.state;
  s.className = "state " + st.state;
  const parts = [];
  if (st.state === "queued") parts.push(`position ${st.position} in the queue`);
  if (st.iteration !== null) parts.push(`iteration ${st.iteration}`);
  if (st.runs) parts.push(`${st.runs} runs`);
  if (st.losses) {
    for (const k of SERIES) if (k in st.losses && (k === "total" || st.losses[k] !== 0)) parts.push(`${k} ${fmt(st.losses[k])}`);
  }
  parts.push(`weights ${st.weights === "random" ? "random" : st.weights}`);
  $("job-line").textContent = parts.join(" · ");
  const msg = $("job-message");
  msg.textContent = st.message ? (st.state === "failed" ? "error: " : "") + st.message : "";
  msg.className = st.state;
  const p = $("job-progress");
  p.max = st.expected_rows || 1;
  p.value = st.state === "done" ? p.max : Math.min(st.rows, p.max);
  $("stop").disabled = !(st.state === "queued" || st.state === "running");
  $("command").textContent = st.command;
  const hasImage = st.image_version > 0 || st.files.includes("result.png") || st.files.includes("current.png");
  link($("dl-image"), hasImage, `/api/jobs/${st.id}/image`, `${st.id}.png`);
  link($("dl-log"), st.rows > 0, `/api/jobs/${st.id}/log`, `${st.id}-log.csv`);
  link($("dl-command"), true, `/api/jobs/${st.id}/command`, `${st.id}-command.txt`);
  $("image-caption").textContent = st.image_iter === null ? "" :
    (["done", "cancelled"].includes(st.state) ? "result" : `iteration ${st.image_iter}`);
}

function link(a, on, href, name) {
  a.classList.toggle("disabled", !on);
  if (on) { a.href = href; a.download = name; } else a.removeAttribute("href");
}

async function stopJob() {
  if (!current) return;
  $("stop").disabled = true;
  try { await api(`/api/jobs/${current.id}/cancel`, {method: "POST"}); } catch (e) { $("job-message").textContent = e.message; }
  poll();
}

// ------------------------------------------------------------------ loss curves
function drawChart(rows) {
  const c = $("loss-chart"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 68, R = 10, T = 10, B = 30;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  const xs = rows.map((r, i) => ("step" in r ? r.step : i));
  const series = SERIES.filter((k) => rows.some((r) => k in r && (k === "total" || r[k] !== 0)));
  if (!rows.length || !series.length) { g.fillStyle = "#667085"; g.fillText("no rows yet", W / 2 - 30, H / 2); return; }
  const vals = series.flatMap((k) => rows.map((r) => r[k]).filter((v) => Number.isFinite(v)));
  const log = vals.every((v) => v > 0);
  const f = log ? Math.log10 : (v) => v;
  let lo = Math.min(...vals.map(f)), hi = Math.max(...vals.map(f));
  if (hi - lo < 1e-12) { lo -= 1; hi += 1; }
  const x0 = Math.min(...xs), x1 = Math.max(x0 + 1, Math.max(...xs));
  const px = (x) => L + (W - L - R) * (x - x0) / (x1 - x0);
  const py = (v) => T + (H - T - B) * (1 - (f(v) - lo) / (hi - lo));
  g.strokeStyle = "#d8dde6"; g.fillStyle = "#667085"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * i / 4, v = hi - (hi - lo) * i / 4;
    g.beginPath(); g.moveTo(L, y); g.lineTo(W - R, y); g.stroke();
    g.fillText(fmt(log ? Math.pow(10, v) : v), 2, y + 4);
  }
  g.fillText(String(x0), L, H - 12); g.fillText(String(x1), W - R - 24, H - 12);
  g.fillText("iteration", W / 2 - 20, H - 2);
  g.fillStyle = "rgba(255,255,255,0.85)";
  g.fillRect(W - R - 76, T + 1, 72, 13 * series.length + 4);
  series.forEach((k, j) => {
    g.strokeStyle = COLORS[k]; g.lineWidth = k === "total" ? 2 : 1.3;
    g.beginPath();
    let started = false;
    rows.forEach((r, i) => {
      const v = r[k];
      if (!Number.isFinite(v) || (log && v <= 0)) { started = false; return; }
      if (!started) { g.moveTo(px(xs[i]), py(v)); started = true; } else g.lineTo(px(xs[i]), py(v));
    });
    g.stroke();
    g.fillStyle = COLORS[k]; g.fillText(k, W - R - 70, T + 12 + 13 * j);
  });
}

// ------------------------------------------------------------------ the job list
async function refreshList() {
  try {
    const {jobs} = await api("/api/jobs");
    const body = $("job-list");
    body.replaceChildren();
    for (const j of jobs) {
      const loss = j.losses ? fmt(j.losses.total) : "";
      const state = j.state === "queued" ? `queued (${j.position})` : j.state;
      const tr = el("tr", {"data-job": j.id, class: current && current.id === j.id ? "current" : null},
                    el("td", {text: j.id}), el("td", {text: j.method}), el("td", {text: state}),
                    el("td", {text: j.iteration === null ? "" : j.iteration}), el("td", {text: loss}));
      tr.addEventListener("click", () => openJob(j.id));
      body.append(tr);
    }
  } catch (e) { /* the next refresh tries again */ }
}

async function init() {
  INFO = await api("/api/info");
  const m = $("method");
  for (const name of INFO.methods) m.append(el("option", {value: name, text: name}));
  m.addEventListener("change", buildForm);
  buildForm();
  $("device").textContent = `device ${INFO.device} · minivgg ${INFO.version}`;
  $("job-form").addEventListener("submit", submit);
  $("stop").addEventListener("click", stopJob);
  drawChart([]);
  refreshList();
  setInterval(refreshList, 2000);
  const hash = /job=([\w-]+)/.exec(location.hash);
  if (hash) openJob(hash[1]);
}

init();
