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
  if (selectedJob !== jobId) { history = []; waitingFor = []; }
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
  const tb = $("#job-tensorboard");
  tb.hidden = !job.tensorboard_url;
  if (job.tensorboard_url) tb.href = job.tensorboard_url;
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

// The phases of a job. The trainer may report its phase (and a feature pass's
// progress) itself; until then the phase follows from the state, the path and
// the evaluations.
const PHASES = ["queued", "features", "training", "evaluating", "exported"];
let waitingFor = [];

function derivedPhase(p) {
  if (p.state === "queued") return "queued";
  if (p.state === "running") return p.path === "head_only" && !p.step ? "features" : "training";
  if (waitingFor.length) return "evaluating";
  return (p.exported_versions || []).length ? "exported" : "evaluating";
}

// Phases only move forward: the further of what the trainer and evaluator
// reported (the hash field and "phase" events) and what the state implies.
function currentPhase(p) {
  const reported = PHASES.indexOf(p.phase);
  return PHASES[Math.max(reported, PHASES.indexOf(derivedPhase(p)))];
}

function renderPhases(p) {
  const now = currentPhase(p);
  const at = PHASES.indexOf(now);
  const finished = ["succeeded", "failed", "cancelled"].includes(p.state) && !waitingFor.length;
  $("#phases").replaceChildren(...PHASES.filter((ph) => ph !== "features" || p.path === "head_only" || p.phase === "features").map((ph) => {
    const i = PHASES.indexOf(ph);
    const status = i < at || (finished && i === at) ? "done" : i === at ? "current" : "pending";
    const detail = ph === now && !finished ? phaseDetail(ph, p) : "";
    return h("li", { class: status, "aria-current": status === "current" ? "step" : null },
      h("span", { class: "name", text: ph }), detail ? h("span", { class: "detail", text: detail }) : null);
  }));
}

function phaseDetail(phase, p) {
  const f = p.features || p.feature_progress;
  if (phase === "features" && f && f.total) return featureText(f, ", ");
  if (phase === "training" && p.max_steps) return `${Math.round((100 * (p.step || 0)) / p.max_steps)}%${p.eta_s != null ? `, ETA ${duration(p.eta_s)}` : ""}`;
  if (phase === "evaluating" && waitingFor.length) return `step${waitingFor.length > 1 ? "s" : ""} ${waitingFor.join(", ")}`;
  return "";
}

// "312 of 736 images, 4.1 img/s, ETA 1 min 40 s": the feature pass's progress.
function featureText(f, sep) {
  const parts = [`${f.done} of ${f.total} images`];
  if (f.images_per_sec != null) parts.push(`${Number(f.images_per_sec).toFixed(1)} img/s`);
  if (f.eta_s != null) parts.push(`ETA ${duration(f.eta_s)}`);
  return parts.join(sep);
}

function setBar(fraction, label) {
  $("#job-progress-bar").style.width = `${Math.round(100 * fraction)}%`;
  $("#job-progress-track").setAttribute("aria-valuenow", String(Math.round(100 * fraction)));
  $("#job-progress-track").setAttribute("aria-label", label);
}

function renderProgress(p) {
  renderPhases(p);
  const f = p.features || p.feature_progress;
  if (currentPhase(p) === "features" && f && f.total && !p.error) {
    // The long part of a head-only job: the bar and the line follow the feature pass.
    setBar(Math.min(1, f.done / f.total), "feature pass progress");
    $("#job-progress").textContent = `features: ${featureText(f, " · ")}`;
    return;
  }
  setBar(p.max_steps ? Math.min(1, (p.step || 0) / p.max_steps) : 0, "training progress");
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
  $("#evaluation").hidden = !ev || !ev.confusion_matrix;
  if (!ev || !ev.confusion_matrix) {
    $("#confusion-title").textContent = "Confusion matrix of the best step (no evaluation yet)";
    return;
  }
  $("#confusion-title").textContent = `Confusion matrix of the best step (${ev.step}); rows: true class, columns: predicted`;
  const names = ev.class_names || ev.confusion_matrix.map((_, i) => `${i}`);
  table.append(h("tr", {}, h("td"), ...names.map((n) => h("th", { scope: "col", text: n }))));
  const max = Math.max(1, ...ev.confusion_matrix.flat());
  ev.confusion_matrix.forEach((row, i) => {
    table.append(h("tr", {}, h("th", { scope: "row", text: names[i] }), ...row.map((count, j) => {
      const cell = h("button", { type: "button", class: "cell", "data-true": i, "data-predicted": j, text: count,
        "aria-label": `${count} ${names[i]} photo${count === 1 ? "" : "s"} predicted as ${names[j]}: show them`,
        onclick: () => loadGallery(ev, names, { true: i, predicted: j }) });
      const td = h("td", {}, cell);
      td.style.background = `rgba(29, 78, 216, ${(0.85 * count) / max})`;
      if (count / max > 0.45) cell.classList.add("dark");
      return td;
    })));
  });
  renderPerClass(ev, names);
  // A live update of the same best step keeps the cell the user chose.
  const key = `${ev.job_id || selectedJob}:${ev.step}`;
  loadGallery(ev, names, gallery.key === key ? gallery.filter : {});
  loadUnusual(ev, names);
}

function renderPerClass(ev, names) {
  const per = ev.per_class || {};
  $("#per-class tbody").replaceChildren(...names.filter((n) => per[n]).map((n) => h("tr", {},
    h("th", { scope: "row", text: n }), h("td", { text: pct(per[n].precision) }), h("td", { text: pct(per[n].recall) }),
    h("td", { text: pct(per[n].f1) }), h("td", { text: per[n].support ?? "" }))));
}

function photo(item, names, jobId, caption) {
  const img = h("img", { alt: `${names[item.label]} photo ${item.file}`, width: 96, height: 96, loading: "lazy" });
  fetch(`/v1/jobs/${encodeURIComponent(jobId)}/thumbnails/${item.thumbnail}.jpg`, { headers: authHeaders() })
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
    .then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = `${item.file} (no thumbnail)`; });
  return h("figure", { class: "photo", "data-file": item.file }, img, h("figcaption", {}, ...caption));
}

async function galleryItems(ev, query) {
  const params = new URLSearchParams(Object.entries(query).map(([k, v]) => [k, String(v)]));
  return api(`/v1/jobs/${encodeURIComponent(ev.job_id || selectedJob)}/evaluations/${ev.step}/images?${params}`);
}

// Misclassified validation photos of the best step, highest loss first; a
// clicked confusion cell shows exactly its photos (right or wrong).
const gallery = { key: null, filter: {} };

async function loadGallery(ev, names, filter) {
  Object.assign(gallery, { key: `${ev.job_id || selectedJob}:${ev.step}`, filter });
  const cell = filter.true != null;
  for (const b of document.querySelectorAll("#confusion .cell")) {
    b.setAttribute("aria-pressed", String(cell && +b.dataset.true === filter.true && +b.dataset.predicted === filter.predicted));
  }
  $("#gallery-title").textContent = cell
    ? `${names[filter.true]} photos predicted as ${names[filter.predicted]} (step ${ev.step})`
    : `Misclassified validation photos of step ${ev.step}, highest loss first`;
  $("#gallery-all").hidden = !cell;
  $("#gallery-all").onclick = () => loadGallery(ev, names, {});
  try {
    const found = await galleryItems(ev, cell ? { ...filter, limit: 60 } : { wrong: true, limit: 60 });
    if (gallery.filter !== filter) return; // a newer choice is on its way
    $("#gallery").replaceChildren(...found.images.map((i) => photo(i, names, ev.job_id || selectedJob, [
      h("span", { text: `true: ${names[i.label]}` }), h("br"),
      h("span", { text: `predicted: ${names[i.predicted]} ${pct(i.score)}` }), h("br"),
      h("span", { class: "muted", text: `loss ${i.loss == null ? "?" : i.loss.toFixed(2)}` })])));
    $("#gallery-count").textContent = found.matched > found.images.length
      ? `showing ${found.images.length} of ${found.matched}` : `${found.matched} photo${found.matched === 1 ? "" : "s"}`;
  } catch (e) {
    $("#gallery").replaceChildren();
    $("#gallery-count").textContent = e.status === 404 ? "No per-image results for this step (evaluated by an older evaluator)." : messageOf(e);
  }
}

async function loadUnusual(ev, names) {
  try {
    const found = await galleryItems(ev, { sort: "ood", limit: 12 });
    $("#unusual").replaceChildren(...found.images.filter((i) => i.ood_score != null).map((i) => photo(i, names, ev.job_id || selectedJob, [
      h("span", { text: names[i.label] }), h("br"),
      h("span", { class: "muted", text: `open-set score ${i.ood_score.toFixed(2)}` })])));
  } catch {
    $("#unusual").replaceChildren();
  }
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
      buffer = (buffer + value).replace(/\r\n/g, "\n"); // sse-starlette ends lines with CRLF
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
    waitingFor = steps;
    renderPhases({ ...lastJob, state: data.state });
    $("#job-title").textContent = `${jobId} — ${data.state}, evaluating step${steps.length > 1 ? "s" : ""} ${steps.join(", ")}`;
  } else if (type === "features") {
    lastJob = { ...lastJob, features: data };
    renderProgress(lastJob);
  } else if (type === "phase") {
    lastJob = { ...lastJob, ...data };
    renderProgress(lastJob);
  } else if (["state", "eval", "export", "error", "end"].includes(type)) {
    if (type === "end") waitingFor = [];
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
