// Line charts in SVG: a few series over training steps, with a legend. One
// point is drawn as a level line across the chart (with its value), so a job
// with one evaluated step reads as a line, not a lone dot.
import { svgEl } from "./core.js";

const W = 480, H = 210, L = 44, R = 12, T = 26, B = 28;

function scale(series, fixedY, fromZero) {
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const xMin = fromZero ? Math.min(0, ...xs) : Math.min(...xs), xMax = Math.max(xMin + 1, ...xs);
  let [yMin, yMax] = fixedY || [Math.min(...ys), Math.max(...ys)];
  if (!(yMax > yMin)) { yMin -= Math.abs(yMin) * 0.5 || 0.5; yMax += Math.abs(yMax) * 0.5 || 0.5; }
  return {
    x: (v) => L + ((v - xMin) / (xMax - xMin)) * (W - L - R),
    y: (v) => H - B - ((v - yMin) / (yMax - yMin)) * (H - B - T),
    xMin, xMax, yMin, yMax,
  };
}

function axes(svg, sc, yFormat, xLabel) {
  svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  svg.append(svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const v of [sc.yMin, (sc.yMin + sc.yMax) / 2, sc.yMax]) {
    svg.append(svgEl("text", { x: L - 4, y: sc.y(v) + 3, "text-anchor": "end" }, yFormat(v)));
  }
  svg.append(svgEl("text", { x: L, y: H - 8 }, String(sc.xMin)));
  svg.append(svgEl("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `${xLabel} ${sc.xMax}`));
}

function drawSeries(svg, sc, s, i, yFormat) {
  const pts = s.points;
  const cls = `series s${i}`;
  if (pts.length === 1) {
    const p = pts[0];
    svg.append(svgEl("line", { class: `${cls} level`, x1: L, x2: W - R, y1: sc.y(p.y), y2: sc.y(p.y) }));
  } else if (pts.length > 1) {
    svg.append(svgEl("polyline", { class: `${cls} line`, points: pts.map((p) => `${sc.x(p.x)},${sc.y(p.y)}`).join(" ") }));
  }
  if (s.dots === false) return;
  for (const p of pts) {
    const dot = svgEl("circle", { class: `${cls} dot${p.best ? " best" : ""}`, cx: sc.x(p.x), cy: sc.y(p.y), r: p.best ? 5 : 3 });
    dot.append(svgEl("title", {}, `${s.name}, step ${p.x}: ${yFormat(p.y)}`));
    svg.append(dot);
  }
}

// series: [{name, points: [{x, y, best?}], dots?}]; options: {y: [min, max], yFormat, xLabel}
export function lineChart(svg, series, options = {}) {
  const yFormat = options.yFormat || ((v) => v.toPrecision(2));
  svg.innerHTML = "";
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const shown = series.filter((s) => s.points.length);
  const sc = scale(shown.length ? shown : [{ points: [{ x: 0, y: 0 }, { x: 1, y: 1 }] }], options.y,
                   options.fromZero !== false);
  axes(svg, sc, yFormat, options.xLabel || "step");
  shown.forEach((s) => drawSeries(svg, sc, s, series.indexOf(s), yFormat));
  if (!shown.length) svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data yet"));
  const summary = shown.map((s) => {
    const last = s.points[s.points.length - 1];
    return `${s.name}: ${s.points.length} point${s.points.length > 1 ? "s" : ""}, last ${yFormat(last.y)} at step ${last.x}`;
  });
  svg.setAttribute("aria-label", `${options.title || "chart"}. ${summary.join("; ") || "no data yet"}`);
  series.forEach((s, i) => {
    const x = L + 8 + i * 120;
    svg.append(svgEl("line", { class: `series s${i} legend`, x1: x, x2: x + 14, y1: 10, y2: 10 }));
    svg.append(svgEl("text", { x: x + 18, y: 14 }, s.name));
  });
}
