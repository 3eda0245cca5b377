// Ground-calibration picker: click image points, type their floor coordinates, see each point's
// reprojection error and the grid preview, save (the server's path is `calibrate ground`'s).
import { api, camPath, cameraFromQuery, el, fmt, fractionAt, label, overlayCanvas, pageUrl,
         setText, showMessage, swapImage } from "./common.js";

const cam = cameraFromQuery();
const $ = (id) => document.getElementById(id);
setText($("title"), cam);
$("back").href = pageUrl("camera", cam);
let frameSize = null;      // [w, h] of the camera's frames (points are in these pixels)
let points = [];           // [{image: [x, y], ground: [gx, gy] | [null, null]}]
let errors = null;         // metres per point, after a fit
const canvas = $("draw");

const redraw = overlayCanvas(canvas, (ctx, w, h) => {
  if (!frameSize) return;
  points.forEach((p, i) => {
    const x = (p.image[0] / frameSize[0]) * w, y = (p.image[1] / frameSize[1]) * h;
    ctx.beginPath(); ctx.arc(x, y, 6, 0, 2 * Math.PI);
    ctx.fillStyle = "#3fb950"; ctx.fill();
    ctx.lineWidth = 2; ctx.strokeStyle = "#000"; ctx.stroke();
    label(ctx, String(i), x + 8, y - 8);
  });
});

function rows() {
  $("rows").replaceChildren(...points.map((p, i) => {
    const gx = el("input", { type: "number", step: "0.01", value: p.ground[0] ?? "", "aria-label": `point ${i} floor x`,
      oninput: (e) => { p.ground[0] = e.target.value === "" ? null : Number(e.target.value); } });
    const gy = el("input", { type: "number", step: "0.01", value: p.ground[1] ?? "", "aria-label": `point ${i} floor y`,
      oninput: (e) => { p.ground[1] = e.target.value === "" ? null : Number(e.target.value); } });
    return el("tr", { "data-point": i }, el("td", {}, String(i)),
      el("td", {}, `${fmt(p.image[0], 0)}, ${fmt(p.image[1], 0)}`), el("td", {}, gx), el("td", {}, gy),
      el("td", { class: "num point-error" }, errors ? `${fmt(errors[i], 3)} m` : "–"),
      el("td", {}, el("button", { class: "danger", title: "remove point",
        onclick: () => { points.splice(i, 1); errors = null; rows(); redraw(); } }, "✕")));
  }));
}

canvas.addEventListener("pointerdown", (ev) => {
  if (!frameSize) return;
  const [fx, fy] = fractionAt(ev, canvas);
  points.push({ image: [Math.round(fx * frameSize[0] * 10) / 10, Math.round(fy * frameSize[1] * 10) / 10],
                ground: [null, null] });
  errors = null;
  rows(); redraw();
  const inputs = $("rows").querySelectorAll(`tr[data-point="${points.length - 1}"] input`);
  if (inputs.length) inputs[0].focus();
});

function body() {
  const missing = points.findIndex((p) => p.ground.some((v) => v === null || Number.isNaN(v)));
  if (missing >= 0) throw new Error(`point ${missing}: type its floor x and y in metres`);
  return { points: points.map((p) => ({ image: p.image, ground: p.ground })),
           image_size: frameSize, grid_m: Number($("grid").value) || 1 };
}

function showRefusal(e) {
  const d = e.detail && typeof e.detail === "object" ? e.detail : null;
  errors = d && d.errors_m ? d.errors_m : null;
  rows();
  showMessage($("msg"), d ? d.detail : (e.detail || e.message), "error");
  $("lines").hidden = !(d && d.lines);
  if (d && d.lines) setText($("lines"), d.lines.join("\n"));
}

function showFit(res) {
  errors = res.errors_m;
  rows();
  $("lines").hidden = false;
  setText($("lines"), res.lines.join("\n"));
}

async function preview(b) {
  const res = await api(camPath(cam, "/calibration/preview"), { method: "POST", body: b, raw: true });
  const url = URL.createObjectURL(await res.blob());
  $("preview").src = url; $("preview").hidden = false; $("no-preview").hidden = true;
}

$("check").addEventListener("click", async () => {
  try {
    const b = body();
    const res = await api(camPath(cam, "/calibration/fit"), { method: "POST", body: b });
    showFit(res);
    showMessage($("msg"), `fit ok: rms ${fmt(res.rms_m, 3)} m, worst ${fmt(res.max_m, 3)} m`, "ok");
    await preview(b);
  } catch (e) { showRefusal(e); }
});

$("save").addEventListener("click", async () => {
  try {
    const b = body();
    const res = await api(camPath(cam, "/calibration"), { method: "PUT", body: b });
    showFit(res);
    const lines = [`saved to ${res.saved.file}`];
    if (res.saved.note) lines.push(res.saved.note);
    if (res.reload) lines.push(res.reload.message);
    showMessage($("msg"), lines.join("\n"), "ok");
    await preview(b);
  } catch (e) { showRefusal(e); }
});

async function load() {
  const ok = await swapImage($("snap"), camPath(cam, `/snapshot.jpg?t=${Date.now()}`));
  $("empty").hidden = ok;
  if (!ok) setText($("empty"), "no snapshot yet: is the camera counting?");
  try {
    const info = await api(camPath(cam));
    if (info.frame_size) frameSize = [info.frame_size[1], info.frame_size[0]];
    const res = await api(camPath(cam, "/calibration"));
    if (!res.writable) showMessage($("msg"), "read-only: the console was started without --config", "error");
    const c = res.calibration;
    if (c && c.points.length) {
      const size = c.image_size || frameSize;
      const sx = frameSize && size ? frameSize[0] / size[0] : 1, sy = frameSize && size ? frameSize[1] / size[1] : 1;
      points = c.points.map((p) => ({ image: [p.image[0] * sx, p.image[1] * sy], ground: [...p.ground] }));
    }
  } catch (e) { showMessage($("msg"), e.message, "error"); }
  rows(); redraw();
}
load();
