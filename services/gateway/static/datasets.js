// Datasets: upload an archive or a folder (with progress), follow its
// conversion, then see its classes, counts per split, thumbnails and what the
// converter skipped.
import { $, api, authHeaders, explain, h, messageOf, registerView, show } from "./core.js";
import { droppedFiles, tarOf } from "./tar.js";

const errorBox = () => $("#datasets-error");
let watching = null;

async function loadDatasets() {
  try {
    const { datasets } = await api("/v1/datasets");
    $("#datasets tbody").replaceChildren(...datasets.map((d) => h("tr", { "data-dataset": d.name },
      h("td", {}, h("a", { href: `#datasets/${encodeURIComponent(d.name)}`, text: d.name,
                          onclick: (e) => { e.preventDefault(); openDataset(d.name); } })),
      h("td", { text: d.state }), h("td", { text: d.num_classes ?? "" }),
      h("td", { text: d.counts ? `${d.counts.train ?? 0} / ${d.counts.validation ?? 0}` : "" }))));
    show(errorBox(), "");
    return datasets;
  } catch (e) {
    show(errorBox(), `Could not list the datasets. ${messageOf(e)}`);
    return [];
  }
}

const safeName = (text) => text.replace(/\.(zip|tgz|tar\.gz|tar|gz|bz2|xz)$/i, "").replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 64);

function archiveType(name) {
  if (/\.zip$/i.test(name)) return "application/zip";
  if (/\.(tgz|gz)$/i.test(name)) return "application/gzip";
  if (/\.tar$/i.test(name)) return "application/x-tar";
  return "application/octet-stream";
}

// XMLHttpRequest, not fetch: only it reports upload progress.
function upload(name, body, type) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/datasets?name=${encodeURIComponent(name)}`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader("Content-Type", type);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) uploadProgress(e.loaded, e.total); };
    xhr.onload = () => {
      let bodyJson = {};
      try { bodyJson = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(bodyJson);
      else reject(Object.assign(new Error(explain(xhr.status, bodyJson.detail || xhr.statusText)), { problems: bodyJson.problems }));
    };
    xhr.onerror = () => reject(new Error("The upload failed: the gateway cannot be reached."));
    xhr.send(body);
  });
}

function uploadProgress(loaded, total) {
  const percent = total ? Math.round((100 * loaded) / total) : 0;
  $("#upload-bar").style.width = `${percent}%`;
  $("#upload-track").setAttribute("aria-valuenow", String(percent));
  $("#upload-state").textContent = `Uploading: ${(loaded / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB (${percent}%)`;
}

async function send(body, type, suggested, what) {
  const nameInput = $("#dataset-name");
  if (!nameInput.value.trim()) nameInput.value = safeName(suggested);
  const name = nameInput.value.trim();
  if (!name) { show(errorBox(), "Give the dataset a name first."); nameInput.focus(); return; }
  show(errorBox(), "");
  $("#upload").hidden = false;
  uploadProgress(0, body.size);
  try {
    await upload(name, body, type);
    $("#upload-state").textContent = `Uploaded ${what}; converting…`;
    nameInput.value = "";
    await loadDatasets();
    openDataset(name);
  } catch (e) {
    $("#upload-state").textContent = "Upload refused.";
    show(errorBox(), messageOf(e));
  }
}

function sendFolder(files) {
  if (!files.length) { show(errorBox(), "That folder has no files."); return; }
  const { blob, count, refused } = tarOf(files);
  if (refused.length) show(errorBox(), `Left out (path too long): ${refused.slice(0, 5).join(", ")}`);
  const top = files[0].path.split("/")[0];
  send(blob, "application/x-tar", top, `${count} files from the folder ${top}`);
}

function sendArchive(file) {
  send(file, archiveType(file.name), file.name, file.name);
}

async function openDataset(name) {
  if (watching) clearTimeout(watching);
  if (location.hash !== `#datasets/${encodeURIComponent(name)}`) history.replaceState(null, "", `#datasets/${encodeURIComponent(name)}`);
  let d;
  try {
    d = await api(`/v1/datasets/${encodeURIComponent(name)}`);
  } catch (e) {
    show(errorBox(), messageOf(e));
    return;
  }
  renderDataset(d);
  if (d.state === "converting") watching = setTimeout(() => openDataset(name), 1000);
  else { loadDatasets(); if (!$("#upload").hidden) $("#upload-state").textContent = `${d.name}: ${d.state}`; }
}

function renderDataset(d) {
  $("#dataset").hidden = false;
  $("#dataset-title").textContent = `${d.name} — ${d.state}`;
  const p = d.progress;
  $("#dataset-state").textContent = d.state === "converting"
    ? (p ? `Converting: ${p.done} of ${p.total} images` : "Waiting for the converter…")
    : d.state === "failed" ? `Conversion failed: ${d.error}` : `${d.converted || 0} image(s) re-encoded to 8-bit RGB and kept.`;
  renderClasses(d);
  renderSkipped(d.skipped || []);
}

function renderClasses(d) {
  const table = $("#dataset-classes");
  const names = d.class_names || [];
  table.hidden = !names.length;
  const per = d.per_class || {};
  table.querySelector("tbody").replaceChildren(...names.map((n) => h("tr", {},
    h("th", { scope: "row", text: n }),
    h("td", { text: per.train ? per.train[n] ?? 0 : "" }),
    h("td", { text: per.validation ? per.validation[n] ?? 0 : "" }),
    h("td", { class: "thumbs" }, ...((d.thumbnails || {})[n] || []).map((key) => thumbnail(d.name, key, `a ${n} photo`))))));
}

// Thumbnails need the token, which an <img src> cannot send: fetch, then a blob URL.
export function thumbnail(dataset, key, alt) {
  const img = h("img", { alt, width: 64, height: 64, loading: "lazy" });
  fetch(`/v1/datasets/${encodeURIComponent(dataset)}/thumbnails/${key}.jpg`, { headers: authHeaders() })
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(r.status))))
    .then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = `${alt} (no thumbnail)`; });
  return img;
}

function renderSkipped(skipped) {
  $("#dataset-skipped-title").textContent = skipped.length ? `Skipped files (${skipped.length})` : "No file was skipped.";
  $("#dataset-skipped").replaceChildren(...skipped.slice(0, 200).map((s) => h("li", {}, h("code", { text: s.file }), `: ${s.reason}`)));
}

function wire() {
  const drop = $("#dataset-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const items = [...e.dataTransfer.items];
    const entries = items.map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
    if (entries.some((en) => en && en.isDirectory)) sendFolder(await droppedFiles(items));
    else if (e.dataTransfer.files.length) sendArchive(e.dataTransfer.files[0]);
  });
  $("#dataset-archive").addEventListener("change", (e) => { if (e.target.files.length) sendArchive(e.target.files[0]); e.target.value = ""; });
  $("#dataset-folder").addEventListener("change", (e) => {
    const files = [...e.target.files].map((f) => ({ path: f.webkitRelativePath || f.name, file: f }));
    e.target.value = "";
    sendFolder(files);
  });
}

wire();
registerView("datasets", {
  show: (name) => { loadDatasets(); if (name) openDataset(name); },
  refresh: loadDatasets,
});
