// Frame labeling for site adaptation: save the current frame at full resolution, click heads or
// type a count (whole frame or per zone), stored in the camera's labels file.
import { api, camPath, cameraFromQuery, el, fractionAt, overlayCanvas, pageUrl, setText,
         showMessage, swapImage } from "./common.js";

const cam = cameraFromQuery();
const $ = (id) => document.getElementById(id);
setText($("title"), cam);
$("back").href = pageUrl("camera", cam);
let image = null;          // {image, width, height}
let points = [];           // image pixels
let zoneNames = [];
const canvas = $("draw");

const redraw = overlayCanvas(canvas, (ctx, w, h) => {
  if (!image) return;
  for (const [x, y] of points) {
    ctx.beginPath(); ctx.arc((x / image.width) * w, (y / image.height) * h, 4, 0, 2 * Math.PI);
    ctx.fillStyle = "#ff3b30"; ctx.fill(); ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff"; ctx.stroke();
  }
});
const mode = () => document.querySelector("input[name=mode]:checked").value;
function modeRows() {
  $("points-row").hidden = mode() !== "points";
  $("count-row").hidden = mode() !== "count";
  $("zones-row").hidden = mode() !== "zones";
}
for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", modeRows);

canvas.addEventListener("pointerdown", (ev) => {
  if (!image || mode() !== "points") return;
  const [fx, fy] = fractionAt(ev, canvas);
  const x = fx * image.width, y = fy * image.height;
  const r = canvas.getBoundingClientRect();
  const near = points.findIndex(([px, py]) => Math.hypot((px - x) / image.width * r.width, (py - y) / image.height * r.height) < 7);
  if (near >= 0) points.splice(near, 1); else points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
  setText($("npoints"), String(points.length));
  redraw();
});
$("undo").addEventListener("click", () => { points.pop(); setText($("npoints"), String(points.length)); redraw(); });

async function show(img, entry) {
  image = img;
  points = entry && entry.points ? entry.points.map((p) => [...p]) : [];
  setText($("npoints"), String(points.length));
  $("count").value = entry && entry.count != null ? entry.count : "";
  for (const input of $("zones-row").querySelectorAll("input")) {
    input.value = entry && entry.zone_counts && entry.zone_counts[input.dataset.zone] != null ? entry.zone_counts[input.dataset.zone] : "";
  }
  setText($("current"), `${img.image} (${img.width}x${img.height})`);
  const ok = await swapImage($("frame"), camPath(cam, `/labels/images/${encodeURIComponent(img.image)}`));
  $("empty").hidden = ok;
  // the stage keeps the frame's own aspect ratio so clicks map to its pixels
  $("stage").style.aspectRatio = `${img.width} / ${img.height}`;
  redraw();
}

$("grab").addEventListener("click", async () => {
  showMessage($("msg"), "asking the pipeline for a full-resolution frame…");
  $("grab").disabled = true;
  try {
    const img = await api(camPath(cam, "/labels/frames"), { method: "POST", body: {} });
    await show(img, null);
    showMessage($("msg"), `saved ${img.image}: now label it`, "ok");
    saved();
  } catch (e) { showMessage($("msg"), e.message, "error"); } finally { $("grab").disabled = false; }
});

$("save").addEventListener("click", async () => {
  if (!image) { showMessage($("msg"), "save a frame first", "error"); return; }
  let body;
  if (mode() === "points") body = { points };
  else if (mode() === "count") body = { count: Number($("count").value) };
  else {
    const zc = {};
    for (const input of $("zones-row").querySelectorAll("input")) if (input.value !== "") zc[input.dataset.zone] = Number(input.value);
    body = { zone_counts: zc };
  }
  try {
    await api(camPath(cam, `/labels/${encodeURIComponent(image.image)}`), { method: "PUT", body });
    showMessage($("msg"), `label of ${image.image} saved`, "ok");
    saved();
  } catch (e) { showMessage($("msg"), e.message, "error"); }
});

async function saved() {
  try {
    const doc = await api(camPath(cam, "/labels"));
    $("saved").replaceChildren(...doc.images.map((e) => {
      const what = e.points ? `${e.points.length} heads` : e.count != null ? `count ${e.count}` :
        Object.entries(e.zone_counts || {}).map(([z, n]) => `${z}: ${n}`).join(", ");
      return el("button", { onclick: async () => {
        const probe = new Image();
        probe.onload = () => show({ image: e.image, width: probe.naturalWidth, height: probe.naturalHeight }, e);
        probe.src = camPath(cam, `/labels/images/${encodeURIComponent(e.image)}`);
      } }, `${e.image} · ${what}`);
    }));
  } catch (e) { showMessage($("msg"), e.message, "error"); }
}

async function zones() {
  try {
    const res = await api(camPath(cam, "/zones"));
    zoneNames = res.zones.map((z) => z.name);
    $("zones-row").replaceChildren(...(zoneNames.length ? zoneNames.map((z) => el("div", { class: "row" },
      el("input", { type: "number", min: "0", step: "1", "data-zone": z, "aria-label": `count in ${z}` }), z))
      : [el("span", { class: "hint" }, "this camera has no zones")]));
  } catch (e) { /* shown on save */ }
}
modeRows();
zones();
saved();
