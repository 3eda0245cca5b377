"""The console's images, all drawn by the project's one drawing code: the heatmap coloured on the
FIXED scale of ``pipeline.overlay`` (``OverlayView.heat_scale`` + ``engines.draw.colorize``) as a
transparent PNG the browser lays over the snapshot, its legend (``engines.draw.legend``), the
full overlay picture (``pipeline.overlay.render_overlay`` on snapshot + heatmap) and the
ground-calibration preview (``calibrate.preview.render_preview``).

Example::

    png = heatmap_png(client.heatmap(key), calibration=cam.calibration)
    png = overlay_png(client.snapshot("mall"), client.heatmap(key), latest, zones, alerts)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.heatmaps import Heatmap
from pipeline.overlay import AlertView, OverlayView, ZoneView, render_overlay

if TYPE_CHECKING:
    from pipeline.client import Picture
    from pipeline.config import CalibrationConfig, ZoneConfig


def encode_png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_jpeg(pic: Picture) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(pic.data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("the stored snapshot is not a readable JPEG")
    return img


def _ground(calibration: CalibrationConfig | None, hm: Heatmap) -> Any:
    """The camera's ground calibration at the heatmap's frame size, or None."""
    if calibration is None:
        return None
    from calibrate.ground import GroundCalibration

    size = (int(hm.meta["frame_height"]), int(hm.meta["frame_width"]))
    try:
        return GroundCalibration.from_config(calibration, frame_size=size)
    except Exception:  # noqa: BLE001 - an unusable calibration: per-cell colours, as the run
        return None


def heat_view(hm: Heatmap, calibration: CalibrationConfig | None = None, **kw: Any
              ) -> OverlayView:
    """The overlay's view of a heatmap: per m² colours when calibrated, else per cell."""
    cell = float(hm.meta["cell_pixels"])
    cal = _ground(calibration, hm)
    m2 = cal.density_m2(hm.density, cell) if cal is not None else None
    kw.setdefault("camera", str(hm.meta.get("camera", "")))
    kw.setdefault("ts", float(hm.meta.get("capture_ts", 0.0)))
    kw.setdefault("count", hm.count)
    return OverlayView(density=hm.density, density_m2_cells=m2, cell_pixels=cell, **kw)


def heatmap_png(hm: Heatmap, calibration: CalibrationConfig | None = None) -> bytes:
    """The heatmap coloured on the overlay's fixed scale, transparent where empty (RGBA PNG at
    the heatmap's own resolution: the browser scales it over the snapshot)."""
    from engines.draw import colorize

    values, vmax, _ = heat_view(hm, calibration).heat_scale()
    assert values is not None
    colours, alpha = colorize(values, vmax)
    rgba = np.dstack([colours, np.round(alpha * 255).astype(np.uint8)])
    return encode_png(rgba)


def legend_png(hm: Heatmap, calibration: CalibrationConfig | None = None,
               height: int = 120) -> bytes:
    """The colour bar of ``heatmap_png``'s scale, with its unit."""
    from engines.draw import legend

    _, vmax, unit = heat_view(hm, calibration).heat_scale()
    return encode_png(legend(height, vmax, unit, scale=0.45))


def overlay_png(pic: Picture, hm: Heatmap | None, latest: dict[str, Any] | None,
                zones: tuple[ZoneConfig, ...] = (), alerts: list[dict[str, Any]] | None = None,
                calibration: CalibrationConfig | None = None, opacity: float = 0.45) -> bytes:
    """``render_overlay`` of the snapshot with its heatmap, zones (with the latest counts) and
    active alerts: the picture a recording shows, as a PNG."""
    frame = decode_jpeg(pic)
    latest = latest or {}
    zc = latest.get("zones") or {}
    zone_views = [ZoneView(z.name, z.polygon, float(zc.get(z.name, {}).get("count", 0.0)),
                           zc.get(z.name, {}).get("density_m2")) for z in zones]
    alert_views = [AlertView(a.get("rule", ""), a.get("severity", "warning"),
                             a.get("metric", "count"), float(a.get("after", 0.0)),
                             float(a.get("threshold", 0.0)), a.get("zone"))
                   for a in alerts or []]
    common = {"camera": str(pic.meta.get("camera", "")),
              "ts": float(pic.meta.get("capture_ts", 0.0)),
              "count": float(latest.get("count", hm.count if hm else 0.0)),
              "density_m2": latest.get("density_m2"), "zones": zone_views,
              "alerts": alert_views, "opacity": opacity,
              "model": str(latest.get("model") or latest.get("engine_id") or "")}
    view = heat_view(hm, calibration, **common) if hm is not None else OverlayView(**common)
    return encode_png(render_overlay(frame, view))


def preview_png(pic: Picture, cal: Any, zones: tuple[ZoneConfig, ...] = (),
                title: str = "") -> bytes:
    """``calibrate.preview.render_preview`` of a fitted calibration on the snapshot."""
    from calibrate.ground import GroundCalibration
    from calibrate.preview import render_preview

    frame = decode_jpeg(pic)
    at_size = GroundCalibration.from_config(cal, frame_size=frame.shape[:2])
    return encode_png(render_preview(frame, at_size, zones=zones, title=title))


__all__ = ["decode_jpeg", "encode_png", "heat_view", "heatmap_png", "legend_png", "overlay_png",
           "preview_png"]
