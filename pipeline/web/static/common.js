// Shared by every console page: API calls (with the write token), DOM building that never
// parses data as HTML (names are text: el() sets textContent only), the live event stream,
// state badges and number formatting.

export const API = "/api/v1";

// A token given once as URL#token=... is kept for this tab (sessionStorage), never sent in a URL.
(function takeTokenFromHash() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("cs-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

export function camPath(cam, suffix = "") {
  return `${API}/cameras/${encodeURIComponent(cam)}${suffix}`;
}

export function pageUrl(page, cam) {
  return `/${page}?c=${encodeURIComponent(cam)}`;
}

export function cameraFromQuery() {
  return new URLSearchParams(location.search).get("c") || "";
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : (detail && detail.detail) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

// fetch JSON; writes carry the token and a JSON body. A 401 asks for the token once.
export async function api(path, { method = "GET", body, raw = false, retried = false } = {}) {
  const opts = { method, headers: {} };
  if (method !== "GET") {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body === undefined ? {} : body);
    const token = sessionStorage.getItem("cs-token");
    if (token) opts.headers["Authorization"] = `Bearer ${token}`;
  }
  const res = await fetch(path, opts);
  if (res.status === 401 && method !== "GET" && !retried) {
    const t = window.prompt("This console needs its token for changes:");
    if (t) {
      sessionStorage.setItem("cs-token", t);
      return api(path, { method, body, raw, retried: true });
    }
  }
  if (!res.ok) {
    let detail = `HTTP ${res.status}`;
    try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
    throw new ApiError(res.status, detail);
  }
  return raw ? res : res.json();
}

// Build an element: attrs (class, href, title, data-*, type, value...) and children (nodes or
// strings, which become text nodes: never HTML).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "value") node.value = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

export function fmt(v, digits = 1) {
  return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits);
}

export function badge(node, state, reason) {
  node.className = `badge ${["online", "reconnecting", "starting", "offline", "finished"]
    .includes(state) ? state : "unknown"}`;
  setText(node, state || "unknown");
  node.title = reason || "";
}

export function alertText(a) {
  const where = a.zone ? ` · ${a.zone}` : "";
  return `${a.severity}: ${a.rule}${where} · ${a.metric} ${fmt(a.after, 2)} ≥ ${fmt(a.threshold, 2)}`;
}

// The live stream. onEvent gets every event ({t: "hello" | "count" | "status" | "alert" |
// "cameras" | "server", ...}); EventSource reconnects by itself and a new "hello" follows.
export function live(onEvent, onState) {
  const es = new EventSource(`${API}/events`);
  es.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); } };
  es.onopen = () => onState && onState(true);
  es.onerror = () => onState && onState(false);
  return es;
}

// Load an image URL, then swap it in (no flicker, and an old picture stays on a failed load).
export function swapImage(img, url) {
  return new Promise((resolve) => {
    const next = new Image();
    next.onload = () => { img.src = url; img.hidden = false; resolve(true); };
    next.onerror = () => resolve(false);
    next.src = url;
  });
}

// Latency probe for benchmarks: seconds from a frame's result to the browser showing it.
window.__csLatency = window.__csLatency || [];
export function recordShown(resultTs) {
  requestAnimationFrame(() => {
    const lat = Date.now() / 1000 - resultTs;
    const arr = window.__csLatency;
    if (arr.length < 100000) arr.push(lat);
  });
}

export function serverIndicator(node) {
  return (ok, error) => {
    node.classList.toggle("down", !ok);
    setText(node, ok ? "live" : `no data: ${error || "reconnecting"}`);
  };
}

// A canvas laid over an image, sized to it in device pixels; draw(ctx, w, h) in CSS pixels.
export function overlayCanvas(canvas, draw) {
  const redraw = () => {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, r.width, r.height);
    draw(ctx, r.width, r.height);
  };
  new ResizeObserver(redraw).observe(canvas);
  return redraw;
}

// Where a pointer event lies on an element, as 0..1 fractions.
export function fractionAt(ev, node) {
  const r = node.getBoundingClientRect();
  return [Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width)),
          Math.min(1, Math.max(0, (ev.clientY - r.top) / r.height))];
}

export function label(ctx, text, x, y, colour = "#fff") {
  ctx.font = "600 13px system-ui, sans-serif";
  ctx.lineWidth = 3;
  ctx.strokeStyle = "rgba(0,0,0,.85)";
  ctx.strokeText(text, x, y);
  ctx.fillStyle = colour;
  ctx.fillText(text, x, y);
}

export function showMessage(node, text, kind = "") {
  node.className = `msg ${kind}`;
  setText(node, text);
}
