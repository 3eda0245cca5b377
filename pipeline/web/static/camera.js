// One camera: live view with zones and their counts, a chart over minutes / hours / a day
// (down-sampled by the server), active alerts and their history, the model that counts it.
import { api, alertText, badge, camPath, cameraFromQuery, el, fmt, label, live, overlayCanvas,
         pageUrl, recordShown, serverIndicator, setText, swapImage } from "./common.js";

const cam = cameraFromQuery();
const $ = (id) => document.getElementById(id);
setText($("title"), cam);
document.title = `crowdstream · ${cam}`;
for (const [id, page] of [["to-zones", "zones"], ["to-zones2", "zones"],
                          ["to-calibrate", "calibrate"], ["to-label", "label"]]) {
  $(id).href = pageUrl(page, cam);
}
const showServer = serverIndicator($("server"));
let polygons = [];          // [{name, polygon}]
let latest = null;          // newest count envelope
let frame = null;
let legendLoaded = false;
const active = new Map();

function heatStyle() {
  $("heatimg").style.opacity = $("heat").checked ? String($("opacity").value / 100) : "0";
  $("legend").hidden = !$("heat").checked || !legendLoaded;
}
$("heat").addEventListener("change", heatStyle);
$("opacity").addEventListener("input", heatStyle);
heatStyle();

const drawZones = overlayCanvas($("zones"), (ctx, w, h) => {
  const zc = (latest && latest.zones) || {};
  for (const z of polygons) {
    if (z.polygon.length < 3) continue;
    ctx.beginPath();
    z.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x * w, y * h) : ctx.moveTo(x * w, y * h)));
    ctx.closePath();
    ctx.lineWidth = 4; ctx.strokeStyle = "rgba(0,0,0,.7)"; ctx.stroke();
    ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.stroke();
    const v = zc[z.name];
    const top = z.polygon.reduce((a, p) => (p[1] < a[1] ? p : a));
    const text = v ? `${z.name}: ${fmt(v.count, 1)}` + (v.density_m2 != null ? ` (${fmt(v.density_m2, 2)} p/m²)` : "")
                   : z.name;
    label(ctx, text, Math.min(top[0] * w + 4, w - 120), Math.max(14, top[1] * h - 6));
  }
});

function zoneRows() {
  const zc = (latest && latest.zones) || {};
  const names = polygons.length ? polygons.map((z) => z.name) : Object.keys(zc);
  $("no-zones").hidden = names.length > 0;
  $("zone-rows").replaceChildren(...names.map((n) => {
    const v = zc[n] || {};
    return el("tr", { "data-zone": n }, el("td", {}, n),
      el("td", { class: "num zone-count" }, fmt(v.count, 1)),
      el("td", { class: "num" }, fmt(v.density, 3)),
      el("td", { class: "num" }, v.density_m2 != null ? fmt(v.density_m2, 2) : "–"));
  }));
}

function showCount(env) {
  latest = env;
  setText($("count"), fmt(env.count, 1));
  if (env.density_m2 != null) { $("m2").hidden = false; setText($("m2"), `${fmt(env.density_m2, 2)} p/m²`); }
  setText($("model"), env.model ? `${env.model} (engine ${env.engine_id})` : `engine ${env.engine_id}`);
  const f = env.snapshot ? env.snapshot.frame_index : null;
  if (f !== null && f !== frame) {
    frame = f;
    swapImage($("snap"), camPath(cam, `/snapshot.jpg?frame=${f}`)).then((ok) => { if (ok) $("empty").hidden = true; });
    swapImage($("heatimg"), camPath(cam, `/heatmap.png?frame=${f}`));
    if (!legendLoaded) swapImage($("legend"), camPath(cam, "/legend.png?height=140"))
      .then((ok) => { legendLoaded = ok; heatStyle(); });
  }
  zoneRows();
  drawZones();
  recordShown(env.result_ts);
}

function showStatus(st) {
  badge($("state"), st.state, st.reason);
  setText($("reason"), st.state === "online" ? "" : st.reason || "");
}

function showActive() {
  const list = [...active.values()];
  $("active").replaceChildren(...(list.length ? list.map((a) => el("div", { class: `alert ${a.severity}` }, alertText(a)))
                                            : [el("span", { class: "hint" }, "none")]));
}

async function history() {
  try {
    const events = await api(`/api/v1/alerts?camera=${encodeURIComponent(cam)}&limit=100`);
    $("no-history").hidden = events.length > 0;
    $("history").replaceChildren(...events.reverse().map((e) => el("tr", {},
      el("td", {}, new Date(e.ts * 1000).toLocaleTimeString()), el("td", {}, e.event),
      el("td", {}, e.zone ? `${e.rule} (${e.zone})` : e.rule), el("td", { class: "num" }, fmt(e.after, 2)))));
  } catch (e) { /* shown by the server indicator */ }
}

// ---- chart
let minutes = 10, plot = null, chartTimer = null;
async function chart() {
  let s;
  try { s = await api(camPath(cam, `/counts?minutes=${minutes}`)); } catch (e) { setText($("chart-note"), e.message); return; }
  setText($("chart-note"), `${s.frames} frames, ${s.step_s} s steps (${s.source})`);
  const series = [{}, { label: "count", stroke: "#4aa3ff", width: 2, scale: "n" }];
  const data = [s.t, s.count];
  const calibrated = s.density_m2.some((v) => v !== null);
  if (calibrated) { series.push({ label: "p/m²", stroke: "#f0883e", width: 2, scale: "m2" }); data.push(s.density_m2); }
  const colours = ["#3fb950", "#d2a8ff", "#ff7b72", "#e3b341", "#79c0ff"];
  Object.entries(s.zones).forEach(([name, z], i) => {
    series.push({ label: name, stroke: colours[i % colours.length], width: 1, scale: "n" });
    data.push(z.count);
  });
  const box = $("chart");
  const opts = {
    width: Math.max(300, box.clientWidth), height: 260, series,
    scales: { x: { time: true }, n: {}, m2: {} },
    axes: [{ stroke: "#8b98a5", grid: { stroke: "#2e3944" } },
           { scale: "n", stroke: "#8b98a5", grid: { stroke: "#2e3944" }, label: "people" },
           ...(calibrated ? [{ scale: "m2", side: 1, stroke: "#f0883e", grid: { show: false }, label: "p/m²" }] : [])],
  };
  if (plot && plot.series.length === series.length) { plot.setData(data); return; }
  if (plot) plot.destroy();
  plot = new window.uPlot(opts, data, box);
}
function scheduleChart() {
  clearInterval(chartTimer);
  chart();
  chartTimer = setInterval(chart, minutes <= 10 ? 5000 : minutes <= 60 ? 20000 : 60000);
}
for (const b of $("ranges").querySelectorAll("button")) {
  b.addEventListener("click", () => {
    for (const o of $("ranges").querySelectorAll("button")) o.classList.toggle("on", o === b);
    minutes = Number(b.dataset.minutes);
    if (plot) { plot.destroy(); plot = null; }
    scheduleChart();
  });
}
window.addEventListener("resize", () => plot && plot.setSize({ width: $("chart").clientWidth, height: 260 }));

async function loadCamera() {
  try {
    const info = await api(camPath(cam));
    polygons = info.zone_polygons || [];
    if (!latest && info.count !== null) setText($("count"), fmt(info.count, 1));
    badge($("state"), info.state, info.reason);
    for (const a of info.active_alerts) active.set(a.alert_id, a);
    showActive();
    zoneRows();
    drawZones();
  } catch (e) { setText($("reason"), e.message); }
}

live((ev) => {
  if (ev.t === "hello") {
    showServer(ev.connected);
    if (ev.latest[cam]) showCount(ev.latest[cam]);
    if (ev.status[cam]) showStatus(ev.status[cam]);
  } else if (ev.camera !== cam) {
    if (ev.t === "server") showServer(ev.connected, ev.error);
  } else if (ev.t === "count") showCount(ev);
  else if (ev.t === "status") showStatus(ev);
  else if (ev.t === "alert") {
    if (ev.event === "end") active.delete(ev.alert_id); else active.set(ev.alert_id, ev);
    showActive(); history();
  }
}, (ok) => { if (!ok) showServer(false, "reconnecting"); });

setInterval(() => { if (latest) setText($("age"), `${fmt(Math.max(0, Date.now() / 1000 - latest.result_ts), 1)} s ago`); }, 500);
setInterval(loadCamera, 10000);   // zones saved elsewhere show up
loadCamera();
history();
scheduleChart();
