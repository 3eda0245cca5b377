// Zone editor: draw or drag polygon points on the snapshot, name the zones, save. The server
// writes them with the comment-keeping writer, checks them like `config validate` (its error
// line is shown here) and asks the running pipeline to apply them; live counts show per zone.
import { api, camPath, cameraFromQuery, el, fmt, fractionAt, label, live, overlayCanvas,
         pageUrl, serverIndicator, setText, showMessage, swapImage } from "./common.js";

const cam = cameraFromQuery();
const $ = (id) => document.getElementById(id);
setText($("title"), cam);
$("back").href = pageUrl("camera", cam);
const showServer = serverIndicator($("server"));
let zones = [];            // [{name, polygon: [[x, y], ...]}]
let selected = -1;
let counts = {};
let dragging = null;       // [zone index, point index]
const canvas = $("draw");

const redraw = overlayCanvas(canvas, (ctx, w, h) => {
  zones.forEach((z, zi) => {
    const sel = zi === selected;
    if (z.polygon.length) {
      ctx.beginPath();
      z.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x * w, y * h) : ctx.moveTo(x * w, y * h)));
      if (z.polygon.length > 2) ctx.closePath();
      ctx.fillStyle = sel ? "rgba(74,163,255,.18)" : "rgba(255,255,255,.08)";
      if (z.polygon.length > 2) ctx.fill();
      ctx.lineWidth = 4; ctx.strokeStyle = "rgba(0,0,0,.7)"; ctx.stroke();
      ctx.lineWidth = 2; ctx.strokeStyle = sel ? "#4aa3ff" : "#fff"; ctx.stroke();
      for (const [x, y] of z.polygon) {
        ctx.beginPath(); ctx.arc(x * w, y * h, sel ? 5 : 3, 0, 2 * Math.PI);
        ctx.fillStyle = sel ? "#4aa3ff" : "#fff"; ctx.fill();
      }
      const top = z.polygon.reduce((a, p) => (p[1] < a[1] ? p : a));
      const c = counts[z.name];
      label(ctx, c ? `${z.name}: ${fmt(c.count, 1)}` : z.name,
            Math.min(top[0] * w + 6, w - 100), Math.max(14, top[1] * h - 8));
    }
  });
});

function list() {
  $("list").replaceChildren(...zones.map((z, i) => {
    const name = el("input", { type: "text", value: z.name, "aria-label": "zone name",
      oninput: (e) => { z.name = e.target.value; redraw(); } });
    const c = counts[z.name];
    return el("div", { class: `zone${i === selected ? " selected" : ""}`, "data-index": i },
      name,
      el("span", { class: "num zone-live", title: "live count" }, c ? fmt(c.count, 1) : "–"),
      el("button", { onclick: () => { selected = i; list(); redraw(); } }, i === selected ? "editing" : "edit"),
      el("button", { class: "danger", title: "delete zone",
        onclick: () => { zones.splice(i, 1); selected = Math.min(selected, zones.length - 1); list(); redraw(); } }, "✕"));
  }));
}

function nearest(fx, fy) {
  const r = canvas.getBoundingClientRect();
  let best = null, bestD = 10;   // pixels
  zones.forEach((z, zi) => z.polygon.forEach(([x, y], pi) => {
    const d = Math.hypot((x - fx) * r.width, (y - fy) * r.height);
    if (d < bestD) { bestD = d; best = [zi, pi]; }
  }));
  return best;
}

canvas.addEventListener("pointerdown", (ev) => {
  const [fx, fy] = fractionAt(ev, canvas);
  const hit = nearest(fx, fy);
  if (hit && ev.shiftKey) {
    zones[hit[0]].polygon.splice(hit[1], 1);
  } else if (hit) {
    dragging = hit; selected = hit[0];
    canvas.setPointerCapture(ev.pointerId);
  } else {
    if (selected < 0) addZone();
    zones[selected].polygon.push([+fx.toFixed(4), +fy.toFixed(4)]);
  }
  list(); redraw();
});
canvas.addEventListener("pointermove", (ev) => {
  if (!dragging) return;
  const [fx, fy] = fractionAt(ev, canvas);
  zones[dragging[0]].polygon[dragging[1]] = [+fx.toFixed(4), +fy.toFixed(4)];
  redraw();
});
canvas.addEventListener("pointerup", () => { dragging = null; });

function addZone() {
  let n = zones.length + 1;
  while (zones.some((z) => z.name === `zone-${n}`)) n++;
  zones.push({ name: `zone-${n}`, polygon: [] });
  selected = zones.length - 1;
}
$("add").addEventListener("click", () => { addZone(); list(); redraw(); });
$("clear").addEventListener("click", () => { if (selected >= 0) zones[selected].polygon = []; redraw(); });

$("save").addEventListener("click", async () => {
  showMessage($("msg"), "saving…");
  $("save").disabled = true;
  try {
    const res = await api(camPath(cam, "/zones"), { method: "PUT", body: { zones } });
    const lines = [`saved to ${res.saved.file}`];
    if (res.saved.note) lines.push(res.saved.note);
    if (res.reload) lines.push(res.reload.message);
    showMessage($("msg"), lines.join("\n"), res.reload && res.reload.applied === false && res.reload.replies.length ? "error" : "ok");
  } catch (e) {
    showMessage($("msg"), typeof e.detail === "string" ? e.detail : e.message, "error");
  } finally {
    $("save").disabled = false;
  }
});

async function picture() {
  const ok = await swapImage($("snap"), camPath(cam, `/snapshot.jpg?t=${Date.now()}`));
  $("empty").hidden = ok;
  if (!ok) setText($("empty"), "no snapshot yet: is the camera counting?");
  redraw();
}
$("refresh").addEventListener("click", picture);

async function load() {
  try {
    const res = await api(camPath(cam, "/zones"));
    zones = res.zones.map((z) => ({ name: z.name, polygon: z.polygon.map((p) => [...p]) }));
    counts = res.latest || {};
    if (!res.writable) showMessage($("msg"), "read-only: the console was started without --config", "error");
    selected = zones.length ? 0 : -1;
  } catch (e) { showMessage($("msg"), e.message, "error"); }
  list(); redraw();
}

live((ev) => {
  if (ev.t === "hello") showServer(ev.connected);
  else if (ev.t === "server") showServer(ev.connected, ev.error);
  else if (ev.t === "count" && ev.camera === cam) {
    counts = ev.zones || {};
    for (const row of $("list").querySelectorAll(".zone")) {
      const z = zones[Number(row.dataset.index)];
      const c = z && counts[z.name];
      setText(row.querySelector(".zone-live"), c ? fmt(c.count, 1) : "–");
    }
    redraw();
  }
});
load();
picture();
