"""Zone counts: polygons (normalised image coordinates) turned into masks on the density grid.

A zone's mask holds, per density cell, the fraction of the cell inside the polygon (rasterised at
``SUPERSAMPLE`` x ``SUPERSAMPLE`` sub-cells), so a zone count is the mask-weighted sum of the density
map and zones that tile the frame add up to the camera's count. Zone density is people per cell
(a cell is ``cell_pixels`` x ``cell_pixels`` frame pixels) and, for a camera with a ground
calibration (``calibrate.ground``), people per square metre.

Example::

    sink = ZoneSink({"lobby": cam_cfg})
    sink.write(result)   # fills result.zone_counts, zone_density (people per cell),
                         # zone_density_m2 and density_m2 (calibrated cameras)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.log import get_logger
from pipeline.config import CameraConfig, ZoneConfig
from pipeline.results import FrameResult, Sink

SUPERSAMPLE = 8


def polygon_mask(polygon: Sequence[Sequence[float]], map_shape: tuple[int, int],
                 frame_size: tuple[int, int], cell_pixels: float,
                 supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction (0..1, float32) of each density cell inside a normalised polygon.

    Cell (i, j) covers frame pixels ``[j*c, (j+1)*c) x [i*c, (i+1)*c)`` with ``c = cell_pixels``;
    the polygon's (x, y) in 0..1 are scaled by the frame's (width, height).
    """
    rows, cols = map_shape
    fh, fw = frame_size
    s = supersample
    sub = cell_pixels / s  # frame pixels per sub-cell
    pts = np.asarray(polygon, np.float64) * [fw, fh] / sub  # polygon in sub-cell units
    h, w = rows * s, cols * s
    # scanline even-odd fill of sub-cell centres (k + 0.5): exact and half-open, so zones sharing
    # an edge never count a sub-cell twice
    yc = np.arange(h) + 0.5
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    crosses = (yc[:, None] >= lo) & (yc[:, None] < hi)  # (rows, edges), horizontal edges never
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (yc[:, None] - y0) / (y1 - y0)
    xs = np.where(crosses, x0 + t * (x1 - x0), np.inf)
    xs.sort(axis=1)
    n = crosses.sum(axis=1)
    diff = np.zeros((h, w + 1), np.int32)
    for k in range(0, xs.shape[1] - 1, 2):
        ok = n > k + 1
        a = np.clip(np.ceil(xs[ok, k] - 0.5), 0, w).astype(np.int64)
        b = np.clip(np.ceil(xs[ok, k + 1] - 0.5), 0, w).astype(np.int64)
        r = np.nonzero(ok)[0]
        np.add.at(diff, (r, a), 1)
        np.add.at(diff, (r, b), -1)
    canvas = np.cumsum(diff[:, :w], axis=1) > 0
    return canvas.reshape(rows, s, cols, s).mean(axis=(1, 3), dtype=np.float32)


class CameraZones:
    """The zones of one camera with masks and ground areas cached per map geometry."""

    def __init__(self, camera: str, cam: CameraConfig) -> None:
        self.camera = camera
        self.zones: list[ZoneConfig] = list(cam.zones)
        self.calibration = cam.calibration
        self.log = get_logger("zones", camera=camera)
        self._geom: tuple[Any, ...] | None = None
        self.masks: dict[str, np.ndarray] = {}
        self.mask_cells: dict[str, float] = {}
        self.area_m2: dict[str, float | None] = {}
        self.ground: Any = None  # calibrate.ground.GroundCalibration, once the frame size is known
        self._ground_failed = False

    def _prepare(self, r: FrameResult) -> None:
        shape = r.density.map.shape
        fsize, cell = (int(r.frame_size[0]), int(r.frame_size[1])), float(r.cell_pixels)
        geom = (shape, fsize, cell)
        if geom == self._geom:
            return
        self._geom = geom
        self.masks = {z.name: polygon_mask(z.polygon, shape, fsize, cell) for z in self.zones}
        self.mask_cells = {n: float(m.sum(dtype=np.float64)) for n, m in self.masks.items()}
        for n, cells in self.mask_cells.items():
            if cells <= 0:
                self.log.warning("zone covers no density cell", zone=n)
        self.ground = None
        self.area_m2 = {}
        if self.calibration is not None and not self._ground_failed:
            self._prepare_ground(fsize, shape, cell)

    def _prepare_ground(self, fsize: tuple[int, int], shape: tuple[int, int], cell: float) -> None:
        try:
            from calibrate.ground import GroundCalibration

            self.ground = GroundCalibration.from_config(self.calibration, frame_size=fsize,
                                                        camera=self.camera)
            cell_area = self.ground.cell_area_m2(shape, cell)
        except Exception as e:  # noqa: BLE001 - keep counting without m^2, say why once
            self._ground_failed = True
            self.ground = None
            self.log.error("ground calibration unusable, no people/m2",
                           error=f"{type(e).__name__}: {e}")
            return
        for z in self.zones:
            area: float | None
            try:
                area = float(self.ground.polygon_area_m2(z.polygon))
            except Exception as e:  # noqa: BLE001 - e.g. a zone reaching the horizon
                # fall back to the cells with ground area under the mask
                area = float((self.masks[z.name] * cell_area).sum())
                self.log.warning("zone area from cells", zone=z.name, reason=str(e)[:160])
            self.area_m2[z.name] = area if area > 0 and np.isfinite(area) else None

    def apply(self, r: FrameResult) -> None:
        """Fill the result's zone fields (count, people per cell, people per m²)."""
        self._prepare(r)
        dens = r.density.map
        for name, mask in self.masks.items():
            c = float(np.vdot(mask, dens))
            c = max(c, 0.0)
            r.zone_counts[name] = c
            cells = self.mask_cells[name]
            r.zone_density[name] = c / cells if cells > 0 else 0.0
            area = self.area_m2.get(name)
            if area:
                r.zone_density_m2[name] = c / area
        if self.ground is not None and r.density_m2 is None:
            r.density_m2 = self.ground.camera_density_m2(dens, r.cell_pixels)


class ZoneSink(Sink):
    """First output sink: computes zone counts and densities into each ``FrameResult``, so every
    later sink (alerts, Redis, JSON lines, recording) reads them from the result."""

    def __init__(self, cameras: dict[str, CameraConfig]) -> None:
        self._cams = {name: CameraZones(name, cam) for name, cam in cameras.items()
                      if cam.zones or cam.calibration is not None}

    def write(self, result: FrameResult) -> None:
        cz = self._cams.get(result.camera)
        if cz is not None:
            cz.apply(result)

    def reconfigure(self, camera: str, cam: CameraConfig) -> None:
        """New zones (or calibration) of one camera, applied from its next frame (live reload:
        the masks are rebuilt for the next frame's geometry)."""
        if cam.zones or cam.calibration is not None:
            self._cams[camera] = CameraZones(camera, cam)
        else:
            self._cams.pop(camera, None)
