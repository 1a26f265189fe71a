// Training jobs: the list, and one job live (progress, curves, evaluations).
import { lineChart } from "./charts.js";
import { $, api, authHeaders, duration, h, messageOf, openView, pct, registerView, show } from "./core.js";

let selectedJob = null;
let stream = null;
let lastJob = {};
let history = []; // progress points of the open job: {step, loss, lr}

const errorBox = () => $("#jobs-error");

async function loadJobs() {
  try {
    const { jobs } = await api("/v1/jobs");
    show(errorBox(), jobs.length ? "" : "No jobs yet: start one under \"New job\".");
    $("#jobs tbody").replaceChildren(...jobs.map(jobRow));
  } catch (e) {
    show(errorBox(), `Could not list the jobs. ${messageOf(e)}`);
  }
}

function jobRow(job) {
  const best = job.best && job.best.accuracy != null ? `${pct(job.best.accuracy)} (step ${job.best.step})` : "";
  const open = h("a", { href: `#jobs/${encodeURIComponent(job.job_id)}`, text: job.job_id,
                        onclick: (e) => { e.preventDefault(); openView("jobs", job.job_id); } });
  const tr = h("tr", { "data-job-id": job.job_id, class: job.job_id === selectedJob ? "selected" : null },
    h("td", {}, open), h("td", { text: job.state }), h("td", { text: job.step ?? "" }), h("td", { text: best }));
  tr.addEventListener("click", (e) => { if (e.target === tr || e.target.tagName === "TD") open.click(); });
  return tr;
}

async function openJob(jobId) {
  if (selectedJob !== jobId) history = [];
  selectedJob = jobId;
  for (const tr of document.querySelectorAll("#jobs tbody tr")) tr.classList.toggle("selected", tr.dataset.jobId === jobId);
  await refreshJob();
  follow(jobId);
}

async function refreshJob() {
  if (!selectedJob) return;
  try {
    renderJob(await api(`/v1/jobs/${encodeURIComponent(selectedJob)}`));
  } catch (e) {
    show(errorBox(), messageOf(e));
  }
}

function renderJob(job) {
  lastJob = job;
  $("#job").hidden = false;
  $("#job-title").textContent = `${job.job_id} — ${job.state}`;
  $("#job-cancel").hidden = !["queued", "running"].includes(job.state);
  renderProgress(job);
  renderAccuracy(job.evaluations || [], job.best);
  renderConfusion(job.best_eval);
}

export function rateText(rate, path) {
  if (rate == null) return "";
  const r = `${Number(rate).toFixed(1)} images/s`;
  // Head-only jobs train the heads over features computed once: their rate is
  // not the network's speed over photos.
  return path === "head_only" ? `${r} (heads over cached features)` : r;
}

function renderProgress(p) {
  const fraction = p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : 0;
  $("#job-progress-bar").style.width = `${Math.round(100 * fraction)}%`;
  $("#job-progress-track").setAttribute("aria-valuenow", String(Math.round(100 * fraction)));
  const parts = [];
  if (p.step != null) parts.push(`step ${p.step}${p.max_steps ? ` of ${p.max_steps}` : ""}`);
  if (p.loss != null) parts.push(`loss ${Number(p.loss).toFixed(3)}`);
  const rate = rateText(p.images_per_sec, p.path);
  if (rate) parts.push(rate);
  if (p.eta_s != null && p.state !== "succeeded") parts.push(`ETA ${duration(p.eta_s)}`);
  if (p.error) parts.push(`error: ${p.error}`);
  $("#job-progress").textContent = parts.join(" · ");
}

function renderAccuracy(evals, best) {
  const scored = evals.filter((e) => e.accuracy != null);
  lineChart($("#accuracy-chart"), [
    { name: "accuracy", points: scored.map((e) => ({ x: e.step, y: e.accuracy, best: best && best.step === e.step })) },
    { name: "recall@5", points: evals.filter((e) => e.recall_at_5 != null).map((e) => ({ x: e.step, y: e.recall_at_5 })) },
  ], { y: [0, 1], yFormat: (v) => pct(v, 0), title: "accuracy and recall@5 per evaluated step" });
}

function renderCurves() {
  const pts = [...new Map(history.map((p) => [p.step, p])).values()].sort((a, b) => a.step - b.step);
  lineChart($("#loss-chart"), [{ name: "loss", dots: false, points: pts.filter((p) => p.loss != null).map((p) => ({ x: p.step, y: p.loss })) }],
    { yFormat: (v) => v.toFixed(2), title: "training loss per step", fromZero: false });
  lineChart($("#lr-chart"), [{ name: "learning rate", dots: false, points: pts.filter((p) => p.lr != null).map((p) => ({ x: p.step, y: p.lr })) }],
    { yFormat: (v) => v.toExponential(1), title: "learning rate per step", fromZero: false });
}

function renderConfusion(ev) {
  const table = $("#confusion");
  table.replaceChildren();
  if (!ev || !ev.confusion_matrix) {
    $("#confusion-title").textContent = "Confusion matrix of the best step (no evaluation yet)";
    return;
  }
  $("#confusion-title").textContent = `Confusion matrix of the best step (${ev.step}); rows: true class, columns: predicted`;
  const names = ev.class_names || ev.confusion_matrix.map((_, i) => `${i}`);
  table.append(h("tr", {}, h("td"), ...names.map((n) => h("th", { scope: "col", text: n }))));
  const max = Math.max(1, ...ev.confusion_matrix.flat());
  ev.confusion_matrix.forEach((row, i) => {
    table.append(h("tr", {}, h("th", { scope: "row", text: names[i] }), ...row.map((count) => {
      const td = h("td", { text: count });
      td.style.background = `rgba(37, 99, 235, ${(0.85 * count) / max})`;
      if (count / max > 0.5) td.style.color = "#fff";
      return td;
    })));
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
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event.data) onJobEvent(jobId, event.type, JSON.parse(event.data));
        // The gateway says end once training is over and every checkpoint is evaluated.
        if (event.type === "end") { reader.cancel(); return; }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") show(errorBox(), `Live updates stopped: ${e.message}`);
  }
}

function parseEvent(chunk) {
  const event = { type: "message", data: "" };
  for (const line of chunk.split("\n")) {
    if (line.startsWith("event: ")) event.type = line.slice(7);
    else if (line.startsWith("data: ")) event.data += line.slice(6);
  }
  return event;
}

function onJobEvent(jobId, type, data) {
  if (jobId !== selectedJob) return;
  if (type === "progress") {
    history.push({ step: data.step, loss: data.loss, lr: data.lr });
    renderCurves();
    renderProgress({ ...lastJob, ...data });
  } else if (type === "waiting") {
    const steps = data.pending_evaluations || [];
    $("#job-title").textContent = `${jobId} — ${data.state}, evaluating step${steps.length > 1 ? "s" : ""} ${steps.join(", ")}`;
  } else if (["state", "eval", "export", "error", "end"].includes(type)) {
    refreshJob();
    loadJobs();
  }
}

// Cancel asks first: the trainer writes a final checkpoint, then stops.
async function cancelJob() {
  const jobId = selectedJob;
  if (!jobId || !window.confirm(`Cancel ${jobId}? The trainer writes a checkpoint, then stops.`)) return;
  try {
    renderJob(await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" }));
    loadJobs();
  } catch (e) {
    show(errorBox(), `Could not cancel. ${messageOf(e)}`);
  }
}

$("#job-cancel").addEventListener("click", cancelJob);

registerView("jobs", {
  show: (jobId) => { loadJobs(); if (jobId) openJob(jobId); else renderCurves(); },
  refresh: () => { loadJobs(); refreshJob(); },
});
