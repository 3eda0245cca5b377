"""The overlay picture of one counted frame: the scene with its density heatmap and zones, a
header strip above it (camera, count, density, time) and alert banners below it — the strips sit
off the scene so nothing in it is hidden. Drawn for recordings and for the console's overlay
images; computing what to show (``OverlayView``) is apart from drawing it (``render_overlay``).

The heatmap uses a FIXED colour scale, with a legend: people per m² for a calibrated camera (red
at ``max_m2``, 4 p/m² by default: congested), otherwise people per map cell (red at
``max_per_cell``). A crowd stands out; an empty room stays its own colour.

Example::

    view = OverlayView(camera="lobby", ts=time.time(), count=12.4, density=dm.map,
                       zones=[ZoneView("door", [(0.1, 0.5), (0.4, 0.5), (0.4, 1.0)], 3.2)])
    img = render_overlay(frame_bgr, view)     # taller than the frame: header + banners
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engines.draw import blend, colorize, draw_text, legend, measure_text, text_scale

DEFAULT_MAX_M2 = 4.0  # p/m²: congested (2 busy, 5+ dangerous)
# people per 8x8 frame pixels drawn red when a camera is not calibrated: one person per 16x16
# pixels, heads touching at a distance. (0.5 left the Mall demo's groups all but invisible: its
# people are 0.05-0.5 per 16-pixel cell, 1.5 at the far end.)
DEFAULT_MAX_PER_8PX = 0.25
ALERT_BGR = {"info": (160, 110, 20), "warning": (0, 140, 230), "critical": (0, 0, 210)}


@dataclass(frozen=True)
class ZoneView:
    """A zone as drawn: its polygon (0..1 image coordinates) and its current values."""

    name: str
    polygon: Sequence[tuple[float, float]]
    count: float
    density_m2: float | None = None


@dataclass(frozen=True)
class AlertView:
    """An active alert as drawn, with the CURRENT value of its metric (not the one at start)."""

    rule: str
    severity: str
    metric: str
    value: float
    threshold: float
    zone: str | None = None


@dataclass(frozen=True)
class OverlayView:
    """Everything drawn on one frame. ``density`` is people per cell; ``density_m2_cells``
    (calibrated cameras) people per m² per cell, which then sets the colours."""

    camera: str
    ts: float
    count: float
    density: np.ndarray | None = None
    density_m2: float | None = None
    density_m2_cells: np.ndarray | None = None
    zones: Sequence[ZoneView] = ()
    alerts: Sequence[AlertView] = ()
    cell_pixels: float = 8.0
    opacity: float = 0.45
    max_m2: float = DEFAULT_MAX_M2
    max_per_cell: float | None = None  # default: DEFAULT_MAX_PER_8PX per 8x8 px of the frame
    model: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def heat_scale(self) -> tuple[np.ndarray | None, float, str]:
        """(values to colour, value drawn red, unit)."""
        if self.density_m2_cells is not None:
            return self.density_m2_cells, self.max_m2, "p/m2"
        vmax = self.max_per_cell or DEFAULT_MAX_PER_8PX * (self.cell_pixels / 8.0) ** 2
        return self.density, vmax, "p/cell"


def render_overlay(frame_bgr: np.ndarray, view: OverlayView, *, alert_rows: int = 0
                   ) -> np.ndarray:
    """A new BGR image: header strip, the frame with heatmap + zones (+ legend), alert strips.
    Height and width stay even (H.264 needs it). ``alert_rows`` > 0 keeps room for exactly that
    many alert strips (empty ones black), so a recording's picture size does not change when an
    alert starts or ends."""
    h, w = frame_bgr.shape[:2]
    scale = text_scale(w)
    scene = np.ascontiguousarray(frame_bgr[..., :3]).copy()
    values, vmax, unit = view.heat_scale()
    if values is not None and values.size and view.opacity > 0:
        colours, alpha = colorize(values, vmax, size=(h, w))
        blend(scene, colours, alpha, view.opacity)
        _paste_legend(scene, legend(max(40, h // 4), vmax, unit, scale=scale * 0.8))
    for z in view.zones:
        _draw_zone(scene, z, scale)
    header = _header(view, w, scale)
    banners = [_banner(a, w, scale) for a in view.alerts]
    if alert_rows > 0:
        banners = banners[:alert_rows]
        banners += [_strip(w, scale, (0, 0, 0)) for _ in range(alert_rows - len(banners))]
    out = np.concatenate([header, scene, *banners], axis=0)
    if out.shape[0] % 2:
        out = np.concatenate([out, np.zeros((1, w, 3), np.uint8)], axis=0)
    return out


def _strip(width: int, scale: float, colour: tuple[int, int, int]) -> np.ndarray:
    height = measure_text("Ag", scale).height + 10
    strip = np.empty((height + height % 2, width, 3), np.uint8)
    strip[:] = colour
    return strip


MIN_TEXT_SCALE = 0.3


def _fit_text(text: str, width: int, scale: float) -> tuple[str, float]:
    """``text`` and a scale at which it fits ``width`` pixels: smaller down to MIN_TEXT_SCALE,
    then cut with "..." (a narrow frame must not lose the end of an alert line off its edge)."""
    room = width - 12
    while measure_text(text, scale).width > room and scale > MIN_TEXT_SCALE:
        scale = max(MIN_TEXT_SCALE, scale * 0.9)
    while len(text) > 4 and measure_text(text, scale).width > room:
        text = text[:-4].rstrip() + "..."
    return text, scale


def _header(view: OverlayView, width: int, scale: float) -> np.ndarray:
    strip = _strip(width, scale, (0, 0, 0))
    text = f"{view.camera}  count {view.count:.1f}"
    if view.density_m2 is not None:
        text += f"  {view.density_m2:.2f} p/m2"
    text += "  " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(view.ts)) + "Z"
    text, size = _fit_text(text, width, scale)
    draw_text(strip, text, (6, strip.shape[0] - 8), scale=size, outline=None)
    if view.model:
        m = measure_text(view.model, scale * 0.8)
        if m.width + 20 < width // 3:
            draw_text(strip, view.model, (width - m.width - 4, strip.shape[0] - 8),
                      scale=scale * 0.8, color=(180, 180, 180), outline=None)
    return strip


def _banner(alert: AlertView, width: int, scale: float) -> np.ndarray:
    strip = _strip(width, scale, ALERT_BGR.get(alert.severity, ALERT_BGR["warning"]))
    where = f" zone {alert.zone}" if alert.zone else ""
    # a count as the zone labels show it (one decimal); densities need two
    value = f"{alert.value:.1f}" if alert.metric == "count" else f"{alert.value:.2f}"
    text = (f"ALERT {alert.severity}: {alert.rule}{where}  {alert.metric} {value} "
            f"(threshold {alert.threshold:g})")
    text, size = _fit_text(text, width, scale)
    draw_text(strip, text, (6, strip.shape[0] - 8), scale=size, outline=None)
    return strip


def _draw_zone(img: np.ndarray, z: ZoneView, scale: float) -> None:
    import cv2

    h, w = img.shape[:2]
    pts = (np.asarray(z.polygon, np.float64) * [w, h]).round().astype(np.int32)
    thick = max(1, round(scale * 2))
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], True, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], True, (255, 255, 255), thick, cv2.LINE_AA)
    label = f"{z.name}: {z.count:.1f}"
    if z.density_m2 is not None:
        label += f" ({z.density_m2:.2f} p/m2)"
    size = measure_text(label, scale)
    # above the zone's top edge, or just inside it when that would leave the frame
    x = int(np.clip(pts[:, 0].min() + 4, 2, max(2, w - size.width)))
    y = int(pts[:, 1].min()) - 6
    if y - size.height < 0:
        y = int(pts[:, 1].min()) + size.height + 4
    draw_text(img, label, (x, y), scale=scale)


def _paste_legend(img: np.ndarray, lg: np.ndarray) -> None:
    h, w = img.shape[:2]
    lh, lw = lg.shape[:2]
    if lh + 8 > h or lw + 8 > w // 3:
        return
    y0, x0 = h - lh - 6, w - lw - 6
    region = img[y0:y0 + lh, x0:x0 + lw]
    region[:] = (region * 0.35 + lg * 0.65).astype(np.uint8)
