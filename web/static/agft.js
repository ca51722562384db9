// AGFT dashboard behaviour: JSON forms to the REST API (with the session's CSRF token),
// and the uPlot charts. No build step; htmx does the live fragments.
"use strict";

function agftCsrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// "pool=chat, region=eu" -> {pool: "chat", region: "eu"}; numbers where asked.
function agftPairs(text, numbers) {
  const out = {};
  for (const part of text.split(",")) {
    const item = part.trim();
    if (!item) continue;
    const at = item.indexOf("=");
    if (at < 1) throw new Error(`"${item}" is not name=value`);
    const name = item.slice(0, at).trim();
    const raw = item.slice(at + 1).trim();
    if (!numbers) { out[name] = raw; continue; }
    if (raw.toLowerCase() === "none" || raw.toLowerCase() === "null") { out[name] = null; continue; }
    const value = Number(raw);
    if (raw === "" || Number.isNaN(value)) throw new Error(`${name}: "${raw}" is not a number`);
    out[name] = value;
  }
  return out;
}

function agftFormBody(form) {
  const body = {};
  for (const field of form.querySelectorAll("[name]")) {
    if (field.disabled || field.name === "csrf_token") continue;
    const kind = field.dataset.kind || "text";
    const raw = field.value.trim();
    if (kind === "number") body[field.name] = raw === "" ? undefined : Number(raw);
    else if (kind === "optional-number") body[field.name] = raw === "" ? null : Number(raw);
    else if (kind === "percent") body[field.name] = raw === "" ? null : Number(raw) / 100;
    else if (kind === "labels") body[field.name] = agftPairs(raw, false);
    else if (kind === "tunables") body[field.name] = agftPairs(raw, true);
    else if (kind === "int-or-none") body[field.name] = raw === "" ? null : parseInt(raw, 10);
    else body[field.name] = raw === "" && field.dataset.empty === "null" ? null : raw;
    if (body[field.name] === undefined) delete body[field.name];
  }
  return body;
}

function agftShowErrors(target, detail) {
  if (!target) return;
  let lines;
  if (Array.isArray(detail)) {
    lines = detail.map((d) => {
      const where = (d.loc || []).filter((p) => p !== "body").join(".");
      return (where ? where + ": " : "") + (d.msg || JSON.stringify(d));
    });
  } else lines = [typeof detail === "string" ? detail : JSON.stringify(detail)];
  target.textContent = lines.join("\n");
}

async function agftSend(element, body) {
  const errors = element.querySelector(".errors") || document.getElementById(element.dataset.errors || "");
  if (errors) errors.textContent = "";
  const init = { method: element.dataset.method || "POST", headers: { "x-csrf-token": agftCsrf() } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const answer = await fetch(element.dataset.api, init);
  if (answer.ok) {
    if (element.dataset.next) window.location.assign(element.dataset.next);
    else window.location.reload();
    return;
  }
  let detail = `${answer.status} ${answer.statusText}`;
  try { detail = (await answer.json()).detail; } catch (_) { /* not JSON */ }
  agftShowErrors(errors, detail);
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
  event.preventDefault();
  let body;
  try { body = agftFormBody(form); } catch (err) {
    agftShowErrors(form.querySelector(".errors"), err.message);
    return;
  }
  agftSend(form, body);
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-api]");
  if (!button || button.form) return;
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  agftSend(button, undefined);
});

// Pinned needs a clock: show the clock field only then.
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-toggles]");
  if (!select) return;
  const other = document.getElementById(select.dataset.toggles);
  if (other) other.hidden = select.value !== select.dataset.when;
});

// ---- charts (uPlot) -------------------------------------------------------------------
function agftChartWidth(el) { return Math.max(280, el.clientWidth - 16); }

function agftInstanceCharts(root) {
  const id = root.dataset.instance;
  const defaultMhz = Number(root.dataset.defaultMhz);
  const ttftSlo = Number(root.dataset.ttftS) * 1000;
  const tpotSlo = Number(root.dataset.tpotS) * 1000;
  const clockEl = root.querySelector("[data-chart=clock]");
  const latencyEl = root.querySelector("[data-chart=latency]");
  const axis = { stroke: "#5b6475", grid: { stroke: "#eef1f5" } };
  const clockChart = new uPlot({
    width: agftChartWidth(clockEl), height: 240,
    scales: { x: { time: true }, mhz: { range: (u, lo, hi) => [0, Math.max(hi, defaultMhz) * 1.05] },
              w: { range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1] },
              tps: { range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1] } },
    series: [{}, { label: "SM clock (MHz)", scale: "mhz", stroke: "#14325c", width: 2 },
             { label: "Power (W)", scale: "w", stroke: "#d9822b", width: 1.5 },
             { label: "Load: tokens generated /s", scale: "tps", stroke: "#6aa0d8", width: 1, dash: [4, 3] }],
    axes: [{ ...axis }, { ...axis, scale: "mhz", label: "MHz" },
           { ...axis, scale: "w", side: 1, label: "W", grid: { show: false } }],
  }, [[], [], [], []], clockEl);
  const latencyChart = new uPlot({
    width: agftChartWidth(latencyEl), height: 240,
    scales: { x: { time: true }, ms: { range: (u, lo, hi) => [0, Math.max(hi, ttftSlo, tpotSlo) * 1.1] } },
    series: [{}, { label: "TTFT p90 (ms)", scale: "ms", stroke: "#14325c", width: 1.5 },
             { label: "TTFT objective", scale: "ms", stroke: "#14325c", dash: [6, 4], width: 1 },
             { label: "Token gap p90 (ms)", scale: "ms", stroke: "#d9822b", width: 1.5 },
             { label: "TPOT objective", scale: "ms", stroke: "#d9822b", dash: [6, 4], width: 1 }],
    axes: [{ ...axis }, { ...axis, scale: "ms", label: "ms" }],
  }, [[], [], [], [], []], latencyEl);
  async function refresh() {
    const answer = await fetch(`/api/v1/instances/${id}/decisions?limit=600`);
    if (!answer.ok) return;
    const rows = (await answer.json()).items.reverse();
    const t = [], clock = [], power = [], load = [], ttft = [], ttftObj = [], itl = [], tpotObj = [];
    for (const r of rows) {
      const end = Date.parse(r.window_end) / 1000;
      const dur = Math.max(end - Date.parse(r.window_start) / 1000, 1e-6);
      t.push(end);
      clock.push(r.clock_in_force_mhz ?? defaultMhz);
      power.push(r.energy_j == null ? null : r.energy_j / dur);
      load.push(r.generation_tokens == null ? null : r.generation_tokens / dur);
      ttft.push(r.ttft_p90_s == null ? null : r.ttft_p90_s * 1000);
      itl.push(r.itl_p90_s == null ? null : r.itl_p90_s * 1000);
      ttftObj.push(ttftSlo); tpotObj.push(tpotSlo);
    }
    clockChart.setData([t, clock, power, load]);
    latencyChart.setData([t, ttft, ttftObj, itl, tpotObj]);
    root.dataset.points = String(t.length);
  }
  refresh();
  setInterval(refresh, 5000);
  window.addEventListener("resize", () => {
    clockChart.setSize({ width: agftChartWidth(clockEl), height: 240 });
    latencyChart.setSize({ width: agftChartWidth(latencyEl), height: 240 });
  });
}

function agftEnergyChart(el) {
  const data = JSON.parse(el.dataset.rows);
  if (!data.length) return;
  const xs = data.map((_, i) => i);
  const chart = new uPlot({
    width: agftChartWidth(el), height: 260,
    scales: { x: { time: false, range: [-0.6, data.length - 0.4] } },
    series: [{}, { label: "Used (kWh)", fill: "#14325c55", stroke: "#14325c", paths: uPlot.paths.bars({ size: [0.4], align: -1 }) },
             { label: "Saved (kWh)", fill: "#17703a99", stroke: "#17703a", paths: uPlot.paths.bars({ size: [0.4], align: 1 }) }],
    axes: [{ values: (u, splits) => splits.map((s) => (Number.isInteger(s) && data[s] ? data[s].group : "")), space: 40 },
           { label: "kWh" }],
  }, [xs, data.map((r) => r.energy_kwh), data.map((r) => r.saved_kwh)], el);
  window.addEventListener("resize", () => chart.setSize({ width: agftChartWidth(el), height: 260 }));
  el.dataset.drawn = "1";
}

document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-instance-charts]")) agftInstanceCharts(el);
  for (const el of document.querySelectorAll("[data-energy-chart]")) agftEnergyChart(el);
});
