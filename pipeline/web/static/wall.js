// The camera wall: every camera's live snapshot with its heatmap (toggle, opacity), count,
// people/m² when calibrated, state badge and active alerts. Live from /api/v1/events.
import { api, alertText, badge, camPath, el, fmt, live, pageUrl, recordShown, serverIndicator,
         setText, swapImage } from "./common.js";

const wall = document.getElementById("wall");
const tiles = new Map();          // camera -> {root, parts..., state}
const active = new Map();         // alert_id -> event
const heatToggle = document.getElementById("heat");
const opacity = document.getElementById("opacity");
const showServer = serverIndicator(document.getElementById("server"));

function heatStyle() {
  for (const t of tiles.values()) {
    t.heat.style.opacity = heatToggle.checked ? String(opacity.value / 100) : "0";
    t.legend.hidden = !heatToggle.checked || !t.legendLoaded;
  }
}
heatToggle.addEventListener("change", heatStyle);
opacity.addEventListener("input", heatStyle);

function tile(cam) {
  if (tiles.has(cam)) return tiles.get(cam);
  const name = el("a", { class: "name", href: pageUrl("camera", cam), title: cam }, cam);
  const state = el("span", { class: "badge unknown" }, "unknown");
  const snap = el("img", { class: "snap", alt: "", hidden: true });
  const heat = el("img", { class: "heat", alt: "", hidden: true });
  const legend = el("img", { class: "legend", alt: "", hidden: true });
  const empty = el("div", { class: "empty" }, "waiting for a snapshot…");
  const count = el("span", { class: "count" }, "–");
  const m2 = el("span", { class: "m2", hidden: true });
  const age = el("span", { class: "age" });
  const reason = el("div", { class: "reason" });
  const alerts = el("div", { class: "alerts" });
  const root = el("section", { class: "tile", "data-camera": cam },
    el("div", { class: "head" }, name, state),
    el("div", { class: "stage" }, snap, heat, legend, empty),
    el("div", { class: "stats" }, count, el("span", { class: "unit" }, "people"), m2, age),
    el("div", { class: "head" }, reason),
    alerts);
  const t = { root, state, snap, heat, legend, empty, count, m2, age, reason, alerts,
              frame: null, resultTs: null, legendLoaded: false };
  tiles.set(cam, t);
  const all = [...tiles.keys()].sort();
  wall.insertBefore(root, tiles.get(all[all.indexOf(cam) + 1])?.root || null);
  document.getElementById("none").hidden = true;
  // a few cameras get big tiles, a site's wall many small ones
  wall.style.setProperty("--tile", tiles.size <= 1 ? "520px" : tiles.size <= 4 ? "440px" : "360px");
  heatStyle();
  return t;
}

function showCount(cam, env) {
  const t = tile(cam);
  setText(t.count, fmt(env.count, 1));
  t.resultTs = env.result_ts;
  if (env.density_m2 !== null && env.density_m2 !== undefined) {
    t.m2.hidden = false;
    setText(t.m2, `${fmt(env.density_m2, 2)} p/m²`);
  }
  const frame = env.snapshot ? env.snapshot.frame_index : null;
  if (frame !== null && frame !== t.frame) {
    t.frame = frame;
    const q = `?frame=${frame}`;
    swapImage(t.snap, camPath(cam, `/snapshot.jpg${q}`)).then((ok) => { if (ok) t.empty.hidden = true; });
    swapImage(t.heat, camPath(cam, `/heatmap.png${q}`));
    if (!t.legendLoaded) {
      swapImage(t.legend, camPath(cam, "/legend.png?height=120")).then((ok) => {
        t.legendLoaded = ok; heatStyle();
      });
    }
  }
  recordShown(env.result_ts);
}

function showStatus(cam, st) {
  const t = tile(cam);
  badge(t.state, st.state, st.reason);
  setText(t.reason, st.state === "online" ? "" : (st.reason || ""));
}

function showAlerts() {
  const byCam = new Map();
  for (const a of active.values()) {
    if (!byCam.has(a.camera)) byCam.set(a.camera, []);
    byCam.get(a.camera).push(a);
  }
  for (const [cam, t] of tiles) {
    const list = byCam.get(cam) || [];
    t.root.classList.toggle("alerting", list.length > 0);
    t.alerts.replaceChildren(...list.map((a) => el("div", { class: `alert ${a.severity}` },
                                                        alertText(a))));
  }
}

function onEvent(ev) {
  if (ev.t === "hello") {
    showServer(ev.connected);
    for (const cam of ev.cameras) tile(cam);
    for (const [cam, env] of Object.entries(ev.latest)) showCount(cam, env);
    for (const [cam, st] of Object.entries(ev.status)) showStatus(cam, st);
    document.getElementById("none").hidden = ev.cameras.length > 0;
  } else if (ev.t === "count") showCount(ev.camera, ev);
  else if (ev.t === "status") showStatus(ev.camera, ev);
  else if (ev.t === "cameras") ev.cameras.forEach(tile);
  else if (ev.t === "server") showServer(ev.connected, ev.error);
  else if (ev.t === "alert") {
    if (ev.event === "end") active.delete(ev.alert_id); else active.set(ev.alert_id, ev);
    showAlerts();
  }
}

setInterval(() => {
  const now = Date.now() / 1000;
  for (const t of tiles.values()) {
    if (t.resultTs) setText(t.age, `${fmt(Math.max(0, now - t.resultTs), 1)} s ago`);
  }
}, 500);

api(`/api/v1/alerts/active`).then((list) => {
  for (const a of list) active.set(a.alert_id, a);
  showAlerts();
}).catch(() => {});
live(onEvent, (ok) => { if (!ok) showServer(false, "reconnecting"); });
