// The incept page: plain JS modules, no build step, nothing from a CDN.
import { $, $$, openView, token } from "./core.js";
import "./predict.js";
import "./datasets.js";
import "./jobform.js";
import "./jobs.js";
import "./models.js";

// `incept up` prints the page as .../#token=<token>: the fragment never reaches a
// server or a log; keep the token for this tab and take it out of the address bar.
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) {
  token.set(params.get("token"));
  history.replaceState(null, "", location.pathname + location.search);
}

const tokenInput = $("#token");
tokenInput.value = token.get();
tokenInput.addEventListener("change", () => {
  token.set(tokenInput.value.trim());
  $("#token-state").textContent = token.get() ? "token kept for this tab" : "no token";
  const current = $$("[role=tab]").find((t) => t.getAttribute("aria-selected") === "true");
  openView(current ? current.dataset.view : "predict");
});
$("#token-state").textContent = token.get() ? "token kept for this tab" : "no token";

// Tabs: click, or arrow keys between them (the ARIA tabs pattern).
const tabs = $$("[role=tab]");
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => openView(tab.dataset.view));
  tab.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (!step) return;
    const next = tabs[(i + step + tabs.length) % tabs.length];
    next.focus();
    openView(next.dataset.view);
  });
});

// The address says which view (and which job) is open: #jobs/<id>.
function route() {
  const [name, arg] = location.hash.slice(1).split("/");
  openView(name || "predict", arg ? decodeURIComponent(arg) : undefined);
}
window.addEventListener("hashchange", route);
route();
