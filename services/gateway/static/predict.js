// Classify a photo: pick or drop one, see its class scores as bars.
import { $, api, h, messageOf, pct, registerView, show } from "./core.js";

const errorBox = () => $("#predict-error");

async function loadModels() {
  const select = $("#model");
  try {
    const { models } = await api("/v1/models");
    const current = select.value;
    select.replaceChildren(...models.map((m) => h("option", { value: m.name, text: m.name })));
    if (current && models.some((m) => m.name === current)) select.value = current;
    show(errorBox(), models.length ? "" : "No model has been exported yet: train a job first.");
  } catch (e) {
    select.replaceChildren();
    show(errorBox(), `Could not list the models. ${messageOf(e)}`);
  }
}

async function classify(file) {
  show(errorBox(), "");
  if (!["image/jpeg", "image/png"].includes(file.type)) {
    $("#result").hidden = true; // the last photo's answer is not this file's
    show(errorBox(), `${file.name} is not a JPEG or PNG photo.`);
    return;
  }
  const model = $("#model").value;
  if (!model) { show(errorBox(), "There is no model to ask yet."); return; }
  const preview = $("#preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = `the photo you chose: ${file.name}`;
  const form = new FormData();
  form.append("images", file, file.name);
  $("#result").setAttribute("aria-busy", "true");
  try {
    renderPrediction(await api(`/v1/classify/${encodeURIComponent(model)}`, { method: "POST", body: form }));
  } catch (e) {
    $("#result").hidden = true;
    show(errorBox(), messageOf(e));
  } finally {
    $("#result").removeAttribute("aria-busy");
  }
}

function renderPrediction(body) {
  const p = body.predictions[0];
  const verdict = $("#verdict");
  verdict.classList.toggle("unknown", p.unknown);
  verdict.textContent = p.unknown
    ? "Not one of the known classes"
    : `${p.top[0].label} (${pct(p.top[0].score)})`;
  $("#bars").replaceChildren(...p.top.map(({ label, score }) => {
    const fill = h("span", { class: "fill" });
    fill.style.width = pct(score);
    return h("div", { class: `bar${p.unknown ? " unknown" : ""}` },
      h("span", { class: "label", text: label }),
      h("span", { class: "track", role: "meter", "aria-label": label, "aria-valuemin": 0,
                  "aria-valuemax": 100, "aria-valuenow": (100 * score).toFixed(1) }, fill),
      h("span", { class: "score", text: pct(score) }));
  }));
  $("#answered-by").textContent = `${body.model}, version ${body.version}`;
  $("#result").hidden = false;
}

function wire() {
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
  });
  $("#file").addEventListener("change", (e) => { if (e.target.files.length) classify(e.target.files[0]); });
}

wire();
registerView("predict", { show: loadModels, refresh: loadModels });
