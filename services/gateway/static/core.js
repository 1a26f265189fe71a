// What every view of the page shares: the API token, calls to the gateway with
// clear messages for each failure, and small DOM and SVG helpers.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

// The token lives in this tab's session storage only: closing the tab forgets it.
const TOKEN_KEY = "incept-token";
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

export function authHeaders() {
  const t = token.get();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

export class ApiFailure extends Error {
  constructor(status, message, problems = []) {
    super(message);
    this.status = status;
    this.problems = problems;
  }
}

// What a person can do about each answer, not only what the gateway said.
export function explain(status, detail) {
  if (status === 401) {
    return token.get()
      ? `The gateway does not accept this token (${detail}). Paste a valid one into "API token".`
      : `This needs an API token: paste one into "API token" at the top (incept up prints it).`;
  }
  if (status === 403) return `This token may not do that (${detail}).`;
  if (status === 413) return `Too large for the gateway: ${detail}`;
  if (status === 503) return `The gateway cannot do this right now: ${detail}`;
  return detail;
}

async function failure(response) {
  const body = await response.json().catch(() => ({}));
  const detail = body.detail || response.statusText || `HTTP ${response.status}`;
  return new ApiFailure(response.status, explain(response.status, detail), body.problems || []);
}

export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (e) {
    throw new ApiFailure(0, `The gateway cannot be reached (${e.message}).`);
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

export function messageOf(e) {
  const problems = e.problems && e.problems.length ? `: ${e.problems.join("; ")}` : "";
  return `${e.message}${problems}`;
}

export function show(el, text) { el.textContent = text || ""; el.hidden = !text; }

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.filter((c) => c != null));
  return el;
}

export function svgEl(name, attrs = {}, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  return el;
}

export const pct = (v, digits = 1) => (v == null ? "" : `${(100 * v).toFixed(digits)}%`);

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// The views, by name: each may have show(arg) (called when it opens).
const views = {};
export function registerView(name, view) { views[name] = view; }

export function openView(name, arg) {
  const tabs = $$("[role=tab]");
  if (!tabs.some((t) => t.dataset.view === name)) name = "predict";
  for (const t of tabs) {
    const active = t.dataset.view === name;
    t.setAttribute("aria-selected", String(active));
    t.tabIndex = active ? 0 : -1;
  }
  for (const v of $$("[role=tabpanel]")) v.hidden = v.id !== `view-${name}`;
  const wanted = arg ? `#${name}/${encodeURIComponent(arg)}` : `#${name}`;
  if (location.hash !== wanted) history.replaceState(null, "", wanted);
  if (views[name] && views[name].show) views[name].show(arg);
}
