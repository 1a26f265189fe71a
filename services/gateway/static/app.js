// The incept page: classify a photo, follow training jobs. Plain JS, no build, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const tokenInput = $("#token");
// `incept up` prints the page as .../#token=<token>: the fragment never reaches a
// server or a log; keep the token and take it out of the address bar.
const fragmentToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (fragmentToken) {
  localStorage.setItem("incept-token", fragmentToken);
  history.replaceState(null, "", location.pathname + location.search);
}
tokenInput.value = localStorage.getItem("incept-token") || "";
tokenInput.addEventListener("change", () => {
  localStorage.setItem("incept-token", tokenInput.value.trim());
  loadModels();
  if (!$("#view-jobs").hidden) loadJobs();
});

function authHeaders() {
  const t = tokenInput.value.trim();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const problems = body.problems ? `: ${body.problems.join("; ")}` : "";
    throw new Error(`${body.detail || response.statusText}${problems}`);
  }
  return body;
}

function show(el, text) { el.textContent = text; el.hidden = !text; }

// ---- tabs ----------------------------------------------------------------
document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== `view-${tab.dataset.view}`; });
  if (tab.dataset.view === "jobs") loadJobs();
}));

// ---- classify ------------------------------------------------------------
async function loadModels() {
  const select = $("#model");
  try {
    const { models } = await api("/v1/models");
    const current = select.value;
    select.innerHTML = "";
    for (const m of models) {
      const option = document.createElement("option");
      option.value = option.textContent = m.name;
      select.append(option);
    }
    if (current) select.value = current;
    show($("#predict-error"), models.length ? "" : "No model has been exported yet.");
  } catch (e) {
    show($("#predict-error"), `Could not list models: ${e.message}`);
  }
}

async function classify(file) {
  show($("#predict-error"), "");
  if (!["image/jpeg", "image/png"].includes(file.type)) {
    show($("#predict-error"), `${file.name} is not a JPEG or PNG photo.`);
    return;
  }
  $("#preview").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("images", file, file.name);
  const model = $("#model").value;
  if (!model) { show($("#predict-error"), "No model to ask."); return; }
  try {
    const body = await api(`/v1/models/${encodeURIComponent(model)}:predict`, { method: "POST", body: form });
    renderPrediction(body);
  } catch (e) {
    show($("#predict-error"), e.message);
  }
}

function renderPrediction(body) {
  const p = body.predictions[0];
  const verdict = $("#verdict");
  verdict.classList.toggle("unknown", p.unknown);
  verdict.textContent = p.unknown
    ? "Not one of the known classes"
    : `${p.top[0].label} (${(100 * p.top[0].score).toFixed(1)}%)`;
  const bars = $("#bars");
  bars.innerHTML = "";
  for (const { label, score } of p.top) {
    const row = document.createElement("div");
    row.className = "bar" + (p.unknown ? " unknown" : "");
    row.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="score"></span>`;
    row.querySelector(".label").textContent = label;
    row.querySelector(".fill").style.width = `${(100 * score).toFixed(1)}%`;
    row.querySelector(".fill").style.display = "block";
    row.querySelector(".score").textContent = `${(100 * score).toFixed(1)}%`;
    bars.append(row);
  }
  $("#answered-by").textContent = `${body.model}, version ${body.version}`;
  $("#result").hidden = false;
}

const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
});
$("#file").addEventListener("change", (e) => { if (e.target.files.length) classify(e.target.files[0]); });

// ---- jobs ----------------------------------------------------------------
let selectedJob = null;
let stream = null;

async function loadJobs() {
  try {
    const { jobs } = await api("/v1/jobs");
    show($("#jobs-error"), jobs.length ? "" : "No jobs yet.");
    const tbody = $("#jobs tbody");
    tbody.innerHTML = "";
    for (const job of jobs) {
      const tr = document.createElement("tr");
      tr.dataset.jobId = job.job_id;
      tr.classList.toggle("selected", job.job_id === selectedJob);
      const best = job.best && job.best.accuracy != null ? `${(100 * job.best.accuracy).toFixed(1)}% (step ${job.best.step})` : "";
      for (const text of [job.job_id, job.state, job.step ?? "", best]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      tr.addEventListener("click", () => openJob(job.job_id));
      tbody.append(tr);
    }
  } catch (e) {
    show($("#jobs-error"), `Could not list jobs: ${e.message}`);
  }
}

async function openJob(jobId) {
  selectedJob = jobId;
  document.querySelectorAll("#jobs tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.jobId === jobId));
  await refreshJob();
  follow(jobId);
}

async function refreshJob() {
  if (!selectedJob) return;
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(selectedJob)}`);
    renderJob(job);
  } catch (e) {
    show($("#jobs-error"), e.message);
  }
}

let lastJob = {};

function renderJob(job) {
  lastJob = job;
  $("#job").hidden = false;
  $("#job-title").textContent = `${job.job_id} — ${job.state}`;
  renderProgress(job);
  renderChart(job.evaluations || [], job.best);
  renderConfusion(job.best_eval);
}

function renderProgress(p) {
  const pct = p.max_steps ? Math.min(100, (100 * (p.step || 0)) / p.max_steps) : 0;
  $("#job-progress-bar").style.width = `${pct}%`;
  const parts = [];
  if (p.step != null) parts.push(`step ${p.step}${p.max_steps ? ` of ${p.max_steps}` : ""}`);
  if (p.loss != null) parts.push(`loss ${Number(p.loss).toFixed(3)}`);
  if (p.images_per_sec != null) parts.push(`${Number(p.images_per_sec).toFixed(1)} images/s`);
  if (p.eta_s != null) parts.push(`ETA ${Math.round(p.eta_s)} s`);
  if (p.error) parts.push(`error: ${p.error}`);
  $("#job-progress").textContent = parts.join(" · ");
}

function svgEl(name, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function renderChart(evals, best) {
  const svg = $("#accuracy-chart");
  svg.innerHTML = "";
  const points = evals.filter((e) => e.accuracy != null);
  const W = 480, H = 200, L = 36, R = 12, T = 10, B = 24;
  svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#9ca3af" }));
  svg.append(svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#9ca3af" }));
  for (const v of [0, 0.5, 1]) {
    const t = svgEl("text", { x: 4, y: H - B - v * (H - B - T) + 3 });
    t.textContent = v.toFixed(1);
    svg.append(t);
  }
  if (!points.length) return;
  const maxStep = Math.max(...points.map((e) => e.step), 1);
  const x = (s) => L + (s / maxStep) * (W - L - R);
  const y = (a) => H - B - a * (H - B - T);
  svg.append(svgEl("polyline", { class: "line", points: points.map((e) => `${x(e.step)},${y(e.accuracy)}`).join(" ") }));
  for (const e of points) {
    const isBest = best && best.step === e.step;
    const dot = svgEl("circle", { class: isBest ? "dot best" : "dot", cx: x(e.step), cy: y(e.accuracy), r: isBest ? 5 : 3 });
    const title = svgEl("title", {});
    title.textContent = `step ${e.step}: ${(100 * e.accuracy).toFixed(1)}%`;
    dot.append(title);
    svg.append(dot);
  }
  const label = svgEl("text", { x: W - R, y: H - 6, "text-anchor": "end" });
  label.textContent = `step ${maxStep}`;
  svg.append(label);
}

function renderConfusion(ev) {
  const table = $("#confusion");
  table.innerHTML = "";
  if (!ev || !ev.confusion_matrix) {
    $("#confusion-title").textContent = "Confusion matrix of the best step (no evaluation yet)";
    return;
  }
  $("#confusion-title").textContent = `Confusion matrix of the best step (${ev.step}); rows: true class, columns: predicted`;
  const names = ev.class_names || ev.confusion_matrix.map((_, i) => `${i}`);
  const head = document.createElement("tr");
  head.append(document.createElement("th"));
  for (const n of names) { const th = document.createElement("th"); th.textContent = n; head.append(th); }
  table.append(head);
  const max = Math.max(1, ...ev.confusion_matrix.flat());
  ev.confusion_matrix.forEach((row, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = names[i];
    tr.append(th);
    row.forEach((count) => {
      const td = document.createElement("td");
      td.textContent = count;
      td.style.background = `rgba(37, 99, 235, ${(0.85 * count) / max})`;
      if (count / max > 0.5) td.style.color = "#fff";
      tr.append(td);
    });
    table.append(tr);
  });
}

// Server-sent events through fetch (EventSource cannot send the bearer token).
async function follow(jobId) {
  if (stream) stream.abort();
  stream = new AbortController();
  const signal = stream.signal;
  try {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers: authHeaders(), signal });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = { type: "message", data: "" };
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event: ")) event.type = line.slice(7);
          else if (line.startsWith("data: ")) event.data += line.slice(6);
        }
        if (event.data) onJobEvent(jobId, event.type, JSON.parse(event.data));
        // The gateway says end once training is over and every checkpoint is evaluated.
        if (event.type === "end") { reader.cancel(); return; }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") show($("#jobs-error"), `Live updates stopped: ${e.message}`);
  }
}

function onJobEvent(jobId, type, data) {
  if (jobId !== selectedJob) return;
  if (type === "progress") {
    renderProgress({ ...lastJob, ...data });
  } else if (type === "waiting") {
    const steps = data.pending_evaluations || [];
    $("#job-title").textContent = `${jobId} — ${data.state}, evaluating step${steps.length > 1 ? "s" : ""} ${steps.join(", ")}`;
  } else if (["state", "eval", "export", "error", "end"].includes(type)) {
    refreshJob();
    loadJobs();
  }
}

loadModels();
