// The new-job form, built from the job spec's JSON schema (GET /v1/schemas/job):
// presets fill it, the gateway's 422 reasons appear beside their fields.
import { $, api, h, messageOf, openView, registerView, show } from "./core.js";

// Shown first; everything else goes under "More settings".
const MAIN = ["dataset", "model_name", "checkpoint", "trainable_scopes", "exclude_scopes", "learning_rate",
  "batch_size", "max_steps", "epochs", "served_model_name"];
let schema = null;
let presets = {};

const title = (name, prop) => prop.title || name;

function kindOf(prop) {
  const variants = prop.anyOf ? prop.anyOf.filter((v) => v.type !== "null") : [prop];
  return { ...prop, ...variants[0], nullable: Boolean(prop.anyOf) };
}

function input(name, p) {
  const attrs = { id: `field-${name}`, name, "aria-describedby": `help-${name} err-${name}` };
  if (p.enum) {
    return h("select", attrs, h("option", { value: "", text: `(default${p.default != null ? `: ${p.default}` : ""})` }),
      ...p.enum.map((v) => h("option", { value: v, text: v })));
  }
  if (p.type === "boolean") {
    return h("select", attrs, h("option", { value: "", text: `(default${p.default != null ? `: ${p.default}` : ""})` }),
      h("option", { value: "true", text: "yes" }), h("option", { value: "false", text: "no" }));
  }
  if (p.type === "integer" || p.type === "number") {
    return h("input", { ...attrs, type: "number", step: p.type === "integer" ? 1 : "any", min: p.minimum, max: p.maximum,
                        placeholder: p.default != null ? String(p.default) : "", inputmode: "decimal" });
  }
  const placeholder = p.type === "array" ? "comma-separated" : p.default != null ? String(p.default) : "";
  return h("input", { ...attrs, type: "text", placeholder, list: name === "dataset" ? "dataset-names" : null, autocomplete: "off" });
}

function field(name, prop) {
  const p = kindOf(prop);
  const help = [p.description, p.type === "array" ? "Comma-separated." : null].filter(Boolean).join(" ");
  return h("div", { class: "field", "data-field": name },
    h("label", { for: `field-${name}`, text: `${title(name, prop)}${(schema.required || []).includes(name) ? " (required)" : ""}` }),
    input(name, p),
    h("small", { id: `help-${name}`, class: "muted", text: help }),
    h("small", { id: `err-${name}`, class: "error field-error", role: "status" }));
}

async function load() {
  if (schema) return;
  const body = await api("/v1/schemas/job");
  schema = body.schema;
  presets = body.presets;
  const names = Object.keys(schema.properties);
  const main = MAIN.filter((n) => names.includes(n));
  $("#job-fields").replaceChildren(...main.map((n) => field(n, schema.properties[n])));
  $("#job-more-fields").replaceChildren(...names.filter((n) => !main.includes(n)).map((n) => field(n, schema.properties[n])));
  $("#presets").replaceChildren(...Object.entries(presets).map(([key, preset]) => h("button", {
    type: "button", class: "preset", "data-preset": key, "aria-describedby": `preset-${key}-help`,
    onclick: () => applyPreset(key) }, h("strong", { text: preset.title }),
  h("span", { id: `preset-${key}-help`, class: "muted", text: preset.description }))));
}

function applyPreset(key) {
  const dataset = $("#field-dataset").value;
  for (const el of $("#job-form").querySelectorAll("[name]")) el.value = "";
  for (const [name, value] of Object.entries(presets[key].spec)) {
    const el = $(`#field-${name}`);
    if (el) el.value = Array.isArray(value) ? value.join(", ") : String(value);
  }
  $("#field-dataset").value = dataset;
  $("#preset-chosen").textContent = `Preset: ${presets[key].title}. Change any field before submitting.`;
  clearErrors();
}

function collect() {
  const spec = {};
  for (const el of $("#job-form").querySelectorAll("[name]")) {
    const raw = el.value.trim();
    if (raw === "") continue;
    const p = kindOf(schema.properties[el.name]);
    if (p.type === "array") spec[el.name] = raw.split(",").map((s) => s.trim()).filter(Boolean);
    else if (p.type === "boolean") spec[el.name] = raw === "true";
    else if (p.type === "integer" || p.type === "number") spec[el.name] = Number(raw);
    else spec[el.name] = raw;
  }
  return spec;
}

function clearErrors() {
  for (const el of document.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#job-form [aria-invalid]")) el.removeAttribute("aria-invalid");
  show($("#job-form-error"), "");
}

// "learning_rate: Input should be greater than 0" goes beside learning_rate; a
// problem naming no field (or several) is listed above the button as well.
function showProblems(message, problems) {
  const general = [];
  for (const problem of problems.length ? problems : [message]) {
    const named = Object.keys(schema.properties).filter((n) => problem.startsWith(`${n}:`) || problem.startsWith(`${n}.`)
      || new RegExp(`\\b${n}\\b`).test(problem));
    for (const n of named) {
      $(`#err-${n}`).textContent = [$(`#err-${n}`).textContent, problem].filter(Boolean).join(" ");
      $(`#field-${n}`).setAttribute("aria-invalid", "true");
      const more = $("#job-more");
      if (more.contains($(`#field-${n}`))) more.open = true;
    }
    if (named.length !== 1) general.push(problem);
  }
  show($("#job-form-error"), `${message}${general.length ? `: ${general.join("; ")}` : " (see the fields marked below)"}`);
  const first = $("#job-form [aria-invalid=true]");
  if (first) first.focus();
}

async function submit(e) {
  e.preventDefault();
  clearErrors();
  const button = $("#job-submit");
  button.disabled = true;
  try {
    const created = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(collect()) });
    openView("jobs", created.job_id);
  } catch (err) {
    showProblems(err.status === 422 ? "The job spec has problems" : messageOf(err), err.problems || []);
  } finally {
    button.disabled = false;
  }
}

async function datasetNames() {
  try {
    const { datasets } = await api("/v1/datasets");
    $("#dataset-names").replaceChildren(...datasets.filter((d) => d.state === "ready").map((d) => h("option", { value: d.name })));
  } catch { /* the form still works: type the name */ }
}

$("#job-form").addEventListener("submit", submit);
registerView("newjob", {
  show: async () => {
    try { await load(); } catch (e) { show($("#job-form-error"), `Could not load the job schema. ${messageOf(e)}`); }
    datasetNames();
  },
});
