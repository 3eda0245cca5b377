"""A picture of a ground calibration: the frame with a metric grid laid on the floor.

Drawn: the calibration points (green dots, numbered) and where the fit puts their measured ground
positions (red crosses, joined to the dot: the reprojection error in pixels), a grid every
``grid_m`` metres on the ground plane (the ground axes X = 0 and Y = 0 brighter), the horizon when it
is in view, what lies outside the ground region darkened (no p/m² there), and the camera's zones
with their ground areas. Needs OpenCV (imported on use).

Example::

    img = render_preview(frame_bgr, cal, zones=cam.zones, title="lobby")
    write_png("lobby_calibration.png", img)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from calibrate.ground import CalibrationError, GroundCalibration
from engines.draw import draw_text


class NamedPolygon(Protocol):
    """A zone to draw: a name and a polygon in 0..1 image coordinates (``ZoneConfig`` is one)."""

    name: str
    polygon: Sequence[tuple[float, float]]


GREEN, RED, GRID, AXIS, ZONE, HORIZON, WHITE = (
    (60, 220, 60), (40, 40, 240), (230, 200, 60), (255, 255, 120), (40, 200, 255), (0, 220, 255),
    (255, 255, 255))
MAX_GRID_LINES = 60  # per direction; the spacing grows (x2, x5, ...) past this


def _grid_extent(cal: GroundCalibration) -> tuple[float, float, float, float] | None:
    """Ground box (x0, x1, y0, y1) to draw the grid over: the floor seen in the frame, cut to a
    few times the calibrated area so the grid does not run off towards the horizon."""
    fh, fw = cal.frame_size
    xs, ys = np.meshgrid(np.linspace(0, fw, 41), np.linspace(0, fh, 41))
    g = cal.image_to_ground(np.stack([xs.ravel(), ys.ravel()], axis=1))
    g = g[np.all(np.isfinite(g), axis=1)]
    if len(g) == 0:
        return None
    lo, hi = np.percentile(g, 2, axis=0), np.percentile(g, 98, axis=0)
    if cal.ground_points is not None and len(cal.ground_points):
        p = cal.ground_points
        c, span = p.mean(axis=0), max(float(np.ptp(p, axis=0).max()), 1.0)
        lo, hi = np.maximum(lo, c - 2 * span), np.minimum(hi, c + 2 * span)
        lo, hi = np.minimum(lo, p.min(axis=0)), np.maximum(hi, p.max(axis=0))
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _nice_step(span: float, step: float) -> float:
    for mult in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if span / (step * mult) <= MAX_GRID_LINES:
            return step * mult
    return span / MAX_GRID_LINES


def _polyline(img: np.ndarray, pts: np.ndarray, color: tuple[int, int, int], thick: int) -> None:
    import cv2

    h, w = img.shape[:2]
    lim = 8 * max(h, w)  # keep coordinates in int range near the horizon
    ok = np.all(np.isfinite(pts), axis=1) & np.all(np.abs(pts) < lim, axis=1)
    run: list[np.ndarray] = []
    for p, good in zip(pts, ok, strict=True):
        if good:
            run.append(p)
            continue
        if len(run) > 1:
            cv2.polylines(img, [np.round(np.array(run)).astype(np.int32)], False, color, thick,
                          cv2.LINE_AA)
        run = []
    if len(run) > 1:
        cv2.polylines(img, [np.round(np.array(run)).astype(np.int32)], False, color, thick,
                      cv2.LINE_AA)


def _text(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int] = WHITE,
          scale: float = 0.45) -> None:
    draw_text(img, text, org, scale=scale, color=color)


def draw_grid(img: np.ndarray, cal: GroundCalibration, grid_m: float = 1.0) -> float | None:
    """Draw the ground grid; returns the spacing used (metres), None if nothing is drawable."""
    ext = _grid_extent(cal)
    if ext is None:
        return None
    x0, x1, y0, y1 = ext
    step = _nice_step(max(x1 - x0, y1 - y0), grid_m)
    n = 200
    for along, (a0, a1), (b0, b1) in ((0, (x0, x1), (y0, y1)), (1, (y0, y1), (x0, x1))):
        for k in range(int(np.ceil(a0 / step)), int(np.floor(a1 / step)) + 1):
            v = k * step
            t = np.linspace(b0, b1, n)
            ground = np.column_stack([np.full(n, v), t] if along == 0 else [t, np.full(n, v)])
            _polyline(img, cal.ground_to_image(ground), AXIS if k == 0 else GRID, 2 if k == 0 else 1)
    return step


def draw_horizon(img: np.ndarray, cal: GroundCalibration) -> None:
    line = cal.horizon()
    if line is None:
        return
    a, b, c = line
    h, w = img.shape[:2]
    if abs(b) < 1e-15:
        return
    ys = [-(a * x + c) / b for x in (0.0, float(w))]
    if all(y < 0 for y in ys) or all(y > h for y in ys):
        return
    _polyline(img, np.array([[0.0, ys[0]], [float(w), ys[1]]]), HORIZON, 1)
    _text(img, "horizon", (5, int(np.clip(ys[0] - 4, 12, h - 4))), HORIZON)


def draw_points(img: np.ndarray, cal: GroundCalibration) -> None:
    import cv2

    if cal.image_points is None or cal.ground_points is None:
        return
    back = cal.ground_to_image(cal.ground_points)
    for i, (p, q) in enumerate(zip(cal.image_points, back, strict=True)):
        pi = (int(round(p[0])), int(round(p[1])))
        if np.all(np.isfinite(q)):
            qi = (int(round(q[0])), int(round(q[1])))
            cv2.line(img, pi, qi, RED, 1, cv2.LINE_AA)
            cv2.drawMarker(img, qi, RED, cv2.MARKER_CROSS, 12, 2, cv2.LINE_AA)
        cv2.circle(img, pi, 5, GREEN, -1, cv2.LINE_AA)
        _text(img, str(i), (pi[0] + 7, pi[1] - 7), GREEN)


def draw_zones(img: np.ndarray, cal: GroundCalibration, zones: Sequence[NamedPolygon]) -> None:
    import cv2

    h, w = img.shape[:2]
    for z in zones:
        poly = np.array(z.polygon, np.float64) * [w, h]
        cv2.polylines(img, [np.round(poly).astype(np.int32)], True, ZONE, 2, cv2.LINE_AA)
        try:
            label = f"{z.name}: {cal.polygon_area_m2(z.polygon):.1f} m2"
        except CalibrationError as e:
            label = f"{z.name}: no area ({e.reason.replace('_', ' ')})"
        cx, cy = poly.mean(axis=0)
        _text(img, label, (int(np.clip(cx - 40, 2, w - 80)), int(np.clip(cy, 14, h - 4))), ZONE, 0.5)


def shade_excluded(img: np.ndarray, cal: GroundCalibration, cell: float = 8.0) -> None:
    """Darken what is outside the ground region (no p/m² there): sky, far field, map holes."""
    import cv2

    h, w = img.shape[:2]
    shape = (int(np.ceil(h / cell)), int(np.ceil(w / cell)))
    off = (cal.cell_area_m2(shape, cell) <= 0).astype(np.uint8)
    if not off.any():
        return
    mask = cv2.resize(off, (shape[1] * int(cell), shape[0] * int(cell)),
                      interpolation=cv2.INTER_NEAREST)[:h, :w].astype(bool)
    img[mask] = (img[mask] * 0.45).astype(np.uint8)


def render_preview(frame_bgr: np.ndarray, cal: GroundCalibration, *,
                   zones: Sequence[NamedPolygon] = (), grid_m: float = 1.0,
                   title: str = "") -> np.ndarray:
    """A BGR image the size of ``frame_bgr`` with the calibration drawn on it.

    ``cal`` must be built for this frame's size (``frame_size == frame_bgr.shape[:2]``).
    """
    if tuple(frame_bgr.shape[:2]) != tuple(cal.frame_size):
        raise ValueError(f"frame is {frame_bgr.shape[1]}x{frame_bgr.shape[0]} but the calibration "
                         f"was built for {cal.frame_size[1]}x{cal.frame_size[0]}")
    img = np.ascontiguousarray(frame_bgr[..., :3], dtype=np.uint8).copy()
    lines = [title] if title else []
    shade_excluded(img, cal)
    if cal.homography is not None:
        step = draw_grid(img, cal, grid_m)
        draw_horizon(img, cal)
        draw_points(img, cal)
        if step is not None:
            lines.append(f"grid {step:g} m")
    else:
        lines.append("perspective-map calibration (no grid)")
    rep = cal.report
    if rep is not None:
        lines.append(f"{len(rep.errors_m)} points: rms {rep.rms_m:.3f} m, max {rep.max_m:.3f} m "
                     f"(point {rep.worst_index}), rms {rep.rms_px:.1f} px")
    draw_zones(img, cal, zones)
    for i, t in enumerate(lines):
        _text(img, t, (8, 18 + 18 * i))
    return img


def write_png(path: str | Path, img: np.ndarray) -> Path:
    """Write ``img`` (BGR) as PNG, creating the folder; raises OSError if it cannot."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"could not encode a PNG for {path}")
    path.write_bytes(buf.tobytes())
    return path
