// Models: every served model's versions (metrics, the job and step each came
// from, why it was exported), which one serves now, pin one or go back to the newest.
import { $, api, h, messageOf, openView, pct, registerView, show } from "./core.js";

const errorBox = () => $("#models-error");
let polling = null;

async function loadModels() {
  clearTimeout(polling);
  try {
    const { models } = await api("/v1/registry/models");
    show(errorBox(), models.length ? "" : "No model has been exported yet.");
    $("#models").replaceChildren(...models.map(modelCard));
    // Until the backend serves what was chosen, look again.
    if (models.some((m) => m.serving != null && !m.available.includes(m.serving))) polling = setTimeout(loadModels, 1000);
  } catch (e) {
    show(errorBox(), `Could not list the models. ${messageOf(e)}`);
  }
}

function modelCard(m) {
  const state = m.pinned != null
    ? `Version ${m.pinned} is pinned (newer exports wait until you unpin).`
    : "The newest version serves (nothing pinned).";
  const now = m.available.length ? `${m.backend} serves version ${m.available.join(", ")} now.` : `${m.backend} serves no version yet.`;
  return h("section", { class: "model", "data-model": m.name, "aria-labelledby": `model-${m.name}` },
    h("div", { class: "job-head" }, h("h2", { id: `model-${m.name}`, text: m.name }),
      m.pinned != null ? h("button", { type: "button", class: "unpin", text: "Unpin: serve the newest",
                                      onclick: () => pin(m.name, null) }) : null),
    h("p", { class: "muted", "aria-live": "polite", text: `${state} ${now}` }),
    h("div", { class: "scroll" }, h("table", { class: "versions" },
      h("thead", {}, h("tr", {}, ...["Version", "Accuracy", "Recall@5", "From", "Why exported", "Serving", ""].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, ...m.versions.map((v) => versionRow(m, v))))));
}

function versionRow(m, v) {
  const metrics = v.metrics || {};
  const serving = v.version === m.serving;
  const from = v.job_id
    ? h("a", { href: `#jobs/${encodeURIComponent(v.job_id)}`, text: `${v.job_id}, step ${v.step}`,
               onclick: (e) => { e.preventDefault(); openView("jobs", v.job_id); } })
    : "";
  const state = serving ? (m.available.includes(v.version) ? "serving" : "loading…") : "";
  return h("tr", { "data-version": v.version, class: serving ? "selected" : null },
    h("th", { scope: "row", text: `${v.version}${v.version === m.pinned ? " (pinned)" : ""}` }),
    h("td", { text: pct(metrics.accuracy) }), h("td", { text: pct(metrics.recall_at_5) }),
    h("td", {}, from), h("td", { text: v.reason || "" }), h("td", { class: "state", text: state }),
    h("td", {}, serving && v.version === m.pinned ? null : h("button", { type: "button", class: "pin",
      text: serving ? `Pin version ${v.version}` : `Serve version ${v.version}`,
      "aria-label": `Pin ${m.name} to version ${v.version}`, onclick: () => pin(m.name, v.version) })));
}

async function pin(name, version) {
  try {
    await api(`/v1/registry/models/${encodeURIComponent(name)}/pin`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ version }) });
  } catch (e) {
    show(errorBox(), `Could not change what serves. ${messageOf(e)}`);
  }
  loadModels();
}

registerView("models", { show: loadModels, refresh: loadModels });
