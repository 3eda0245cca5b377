"""Ground-plane calibration: how many square metres of floor each density-map cell covers.

A camera looking at a flat floor sees it through a homography ``H`` (3x3, image pixels -> ground
metres). From ``H`` every density cell's ground area follows exactly: a homography maps straight
lines to straight lines, so a square cell maps to a quadrilateral whose area is the shoelace area of
its four mapped corners. Cells touching or above the horizon (the image line ``H[2] . (x, y, 1) = 0``)
have no finite ground area: they get area 0 and are excluded, never divided by.

The alternative input is a perspective map (per-pixel scale), e.g. the Mall dataset's
``perspective_map.npy``; see :func:`perspective_pixel_area_m2` for what its values mean (the Mall
one scales people, and a pixel's floor area goes as its value to the power 1.5).

Coordinates: image points are continuous pixel coordinates of a ``(width, height)`` frame, (0, 0) the
top-left corner of the top-left pixel; a density cell ``(i, j)`` with side ``c`` pixels covers
``[j*c, (j+1)*c) x [i*c, (i+1)*c)``. Zones are polygons in normalised coordinates (x / width,
y / height). Ground coordinates are metres in any right- or left-handed frame.

Example::

    cal = GroundCalibration.from_config(cam.calibration, frame_size=(480, 640))
    areas = cal.cell_area_m2(dm.map.shape, dm.cell_pixels)      # m^2 per cell, 0 = excluded
    dens = cal.density_m2(dm.map, dm.cell_pixels)                 # people / m^2 per cell
    zone_area = cal.polygon_area_m2(zone.polygon)                 # m^2 (precompute once)
    zone_density_m2(zone_count, zone_area)                        # people / m^2, None if no area
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from calibrate.config import CalibrationConfig
from engines.yamlconfig import ConfigError

Reason = Literal[
    "too_few_points", "duplicate_points", "collinear_points", "off_image", "inconsistent_points",
    "reprojection_error", "image_size_mismatch", "no_calibration", "bad_homography",
    "above_horizon", "bad_perspective_map", "ambiguous_calibration",
]

PerspectiveKind = Literal["area_weight", "ground_area_weight", "pixels_per_unit"]

# Distance from the line through two points, as a fraction of the triple's longest side, under which
# three points count as collinear: such a set pins no homography down (the fit is ill-conditioned).
COLLINEAR_TOLERANCE = 0.01
DUPLICATE_IMAGE_PX = 0.5
DUPLICATE_GROUND_M = 1e-3
# |w| (the homography's third coordinate, normalised by its value at the calibration points' mean)
# under which a corner counts as on the horizon; keeps areas finite and signs unambiguous.
HORIZON_EPS = 1e-9


class CalibrationError(ConfigError):
    """A calibration that cannot be used; ``reason`` is a stable code, the message says why."""

    def __init__(self, reason: Reason, message: str, *, file: str | None = None,
                 key: str = "calibration", report: FitReport | None = None) -> None:
        self.reason = reason
        self.message = message
        self.report = report  # the per-point errors, when a fit got that far
        super().__init__(file, key, message)


@dataclass(frozen=True)
class FitReport:
    """How well a homography reproduces its calibration points.

    ``errors_m[i]``: distance on the ground between point i's measured position and its image point
    mapped through H; ``errors_px[i]``: distance in the image between point i and its ground position
    mapped back. With exactly 4 points the fit is exact (no redundancy to detect a wrong point).
    """

    errors_m: np.ndarray
    errors_px: np.ndarray
    rms_m: float
    max_m: float
    rms_px: float
    worst_index: int
    exact: bool

    def lines(self, image_pts: np.ndarray, ground_pts: np.ndarray) -> list[str]:
        """Human-readable per-point and overall error lines (what the CLI prints)."""
        out = []
        for i, ((x, y), (gx, gy)) in enumerate(zip(image_pts, ground_pts, strict=True)):
            out.append(f"  point {i}: image ({x:.1f}, {y:.1f}) px -> ground ({gx:.3f}, {gy:.3f}) m: "
                       f"error {self.errors_m[i]:.4f} m ({self.errors_px[i]:.2f} px)")
        out.append(f"  overall: rms {self.rms_m:.4f} m, max {self.max_m:.4f} m (point "
                   f"{self.worst_index}), rms {self.rms_px:.2f} px"
                   + ("  [4 points: exact fit, add more points to check consistency]"
                      if self.exact else ""))
        return out


def _normalise(pts: np.ndarray) -> np.ndarray:
    """Hartley normalisation: centroid to 0, mean distance sqrt(2). Returns the 3x3 transform."""
    c = pts.mean(axis=0)
    d = np.sqrt(((pts - c) ** 2).sum(axis=1)).mean()
    s = np.sqrt(2.0) / d if d > 0 else 1.0
    return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])


def apply_homography(h: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map (n, 2) points through ``h``; returns (mapped (n, 2), w (n,)). w's sign says the side."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    hom = pts @ h[:, :2].T + h[:, 2]
    w = hom[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return hom[:, :2] / w[:, None], w


def fit_homography(image_pts: np.ndarray, ground_pts: np.ndarray, *, refine: bool = True) -> np.ndarray:
    """Image -> ground homography by normalised DLT, refined on the ground error (metres).

    The DLT minimises an algebraic error; with more than 4 points a Levenberg-Marquardt pass then
    minimises the sum of squared ground distances, the error the calibration is judged by.
    Call :func:`check_point_set` first: this does not refuse degenerate sets.

    Example: ``h = fit_homography(pixels_n_by_2, metres_n_by_2)``; ``apply_homography(h, pixels)``.
    """
    src = np.asarray(image_pts, np.float64)
    dst = np.asarray(ground_pts, np.float64)
    ts, td = _normalise(src), _normalise(dst)
    s = src @ ts[:2, :2].T + ts[:2, 2]
    d = dst @ td[:2, :2].T + td[:2, 2]
    n = len(s)
    a = np.zeros((2 * n, 9))
    a[0::2, 0:2], a[0::2, 2] = s, 1
    a[0::2, 6:8], a[0::2, 8] = -d[:, :1] * s, -d[:, 0]
    a[1::2, 3:5], a[1::2, 5] = s, 1
    a[1::2, 6:8], a[1::2, 8] = -d[:, 1:] * s, -d[:, 1]
    hn = np.linalg.svd(a)[2][-1].reshape(3, 3)
    if refine and n > 4 and abs(hn[2, 2]) > 1e-12:
        from scipy.optimize import least_squares

        hn = hn / hn[2, 2]

        def resid(p: np.ndarray) -> np.ndarray:
            m = np.append(p, 1.0).reshape(3, 3)
            return (apply_homography(m, s)[0] - d).ravel()

        res = least_squares(resid, hn.ravel()[:8], method="lm")
        if np.all(np.isfinite(res.x)):
            hn = np.append(res.x, 1.0).reshape(3, 3)
    h = np.linalg.inv(td) @ hn @ ts
    return h / np.linalg.norm(h)


def _collinear(p: np.ndarray, i: int, j: int, k: int) -> bool:
    a, b, c = p[i], p[j], p[k]
    sides = [np.linalg.norm(b - a), np.linalg.norm(c - a), np.linalg.norm(c - b)]
    longest = max(sides)
    if longest == 0:
        return True
    area2 = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
    return area2 / longest < COLLINEAR_TOLERANCE * longest  # height over the longest side


def check_point_set(image_pts: np.ndarray, ground_pts: np.ndarray,
                    image_size: tuple[int, int] | None) -> None:
    """Refuse point sets that cannot define a ground homography; raises :class:`CalibrationError`.

    Checks, in order: at least 4 pairs, no point off the ``(width, height)`` image, no duplicate
    image or ground points, and at least 4 points in general position in both planes (a set whose
    points all but one lie on one line has no 4 points with no 3 collinear).

    Example: ``check_point_set(img, gnd, (640, 480))`` raises ``CalibrationError`` with
    ``.reason == "collinear_points"`` when three of four points share a line.
    """
    n = len(image_pts)
    if n != len(ground_pts):
        raise CalibrationError("too_few_points", f"{n} image points but {len(ground_pts)} ground points")
    if n < 4:
        raise CalibrationError("too_few_points",
                               f"a ground homography needs at least 4 points, got {n}")
    for name, pts in (("image", image_pts), ("ground", ground_pts)):
        if not np.all(np.isfinite(pts)):
            raise CalibrationError("bad_homography", f"{name} points contain NaN or infinity")
    if image_size is not None:
        w, h = image_size
        for i, (x, y) in enumerate(image_pts):
            if not (0.0 <= x <= w and 0.0 <= y <= h):
                raise CalibrationError("off_image", f"point {i} ({x:g}, {y:g}) is off the {w}x{h} "
                                       f"image (x must be in 0..{w}, y in 0..{h})")
    for name, pts, tol, unit in (("image", image_pts, DUPLICATE_IMAGE_PX, "px"),
                                 ("ground", ground_pts, DUPLICATE_GROUND_M, "m")):
        for i, j in itertools.combinations(range(n), 2):
            if np.linalg.norm(pts[i] - pts[j]) < tol:
                raise CalibrationError("duplicate_points", f"points {i} and {j} have the same "
                                       f"{name} position {tuple(pts[i])} (closer than {tol} {unit})")
    for name, pts in (("image", image_pts), ("ground", ground_pts)):
        for i, j in itertools.combinations(range(n), 2):
            on_line = [k for k in range(n) if k in (i, j) or _collinear(pts, i, j, k)]
            if len(on_line) >= n - 1:
                if len(on_line) == n:
                    what = f"all {n} {name} points lie on one line"
                else:
                    what = (f"{name} points {on_line} lie on one line (with {n} points at most "
                            f"{n - 2} may share a line)")
                raise CalibrationError("collinear_points", what + "; a homography needs 4 points "
                                       "with no 3 on a line")


@dataclass
class GroundCalibration:
    """Ground area per image region for one camera, from a homography or a perspective map.

    Build with :meth:`from_config` (or :meth:`from_points`, :meth:`from_homography`,
    :meth:`from_perspective_map`). ``frame_size`` is (height, width) of the frames it is applied
    to; ``homography`` maps those frames' pixels to ground metres (None for a perspective map).

    Example::

        cal = GroundCalibration.from_points(img, ground, frame_size=(480, 640))
        print(cal.report.rms_m, cal.polygon_area_m2([(0, .5), (1, .5), (1, 1), (0, 1)]))
    """

    frame_size: tuple[int, int]
    homography: np.ndarray | None = None
    pixel_area: np.ndarray | None = None  # perspective path: m^2 per map pixel, 0 = excluded
    report: FitReport | None = None
    image_points: np.ndarray | None = None  # in frame pixels
    ground_points: np.ndarray | None = None
    max_m_per_px: float | None = None  # coarser cells are outside the ground region (area 0)
    _ground_sign: float = 1.0
    _cache: dict[tuple[tuple[int, int], float], np.ndarray] = field(default_factory=dict, repr=False)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cal: CalibrationConfig, frame_size: tuple[int, int], *,
                    camera: str | None = None, file: str | None = None) -> GroundCalibration:
        """Build from a camera's ``calibration:`` section for frames of ``frame_size`` (h, w).

        Uses the stored ``homography`` when present (checked against ``points`` if both are given),
        else fits ``points``, else loads ``perspective_map``. Raises :class:`CalibrationError`
        naming the config key and the reason.
        """
        key = f"cameras.{camera}.calibration" if camera else "calibration"
        try:
            out = cls._from_config(cal, frame_size)
        except CalibrationError as e:
            raise CalibrationError(e.reason, e.message, file=file, key=key,
                                   report=e.report) from None
        out.max_m_per_px = cal.max_metres_per_pixel
        return out

    @classmethod
    def _from_config(cls, cal: CalibrationConfig, frame_size: tuple[int, int]) -> GroundCalibration:
        has_h = cal.homography is not None or bool(cal.points)
        if has_h and cal.perspective_map:
            raise CalibrationError("ambiguous_calibration", "give either points/homography or "
                                   "perspective_map, not both")
        img = np.array([p.image for p in cal.points], np.float64).reshape(-1, 2)
        gnd = np.array([p.ground for p in cal.points], np.float64).reshape(-1, 2)
        size = tuple(cal.image_size) if cal.image_size else None
        if cal.homography is not None:
            if size is None:
                raise CalibrationError("image_size_mismatch", "image_size (width, height) is "
                                       "required with homography: it says which pixels H maps")
            out = cls.from_homography(np.array(cal.homography, np.float64), frame_size,
                                      image_size=size)
            if len(img):
                out._attach_points(img, gnd, size, cal.max_reprojection_error_m,
                                   stale_hint=" (points changed since the homography was written? "
                                   "rerun `crowdstream calibrate ground`)")
            return out
        if len(img) or not cal.perspective_map:
            if not len(img):
                raise CalibrationError("no_calibration", "needs points (>= 4 image/ground pairs), "
                                       "a homography or a perspective_map")
            return cls.from_points(img, gnd, frame_size, image_size=size,
                                   max_error_m=cal.max_reprojection_error_m)
        path = Path(cal.perspective_map)
        try:
            pmap = np.load(path)
        except (OSError, ValueError) as e:
            raise CalibrationError("bad_perspective_map", f"cannot read perspective_map "
                                   f"{path}: {e}") from None
        return cls.from_perspective_map(pmap, frame_size, units_per_m=cal.perspective_units_per_m,
                                        kind=cal.perspective_kind)

    @classmethod
    def from_points(cls, image_pts: Sequence[Sequence[float]] | np.ndarray,
                    ground_pts: Sequence[Sequence[float]] | np.ndarray,
                    frame_size: tuple[int, int], *, image_size: tuple[int, int] | None = None,
                    max_error_m: float = 0.25) -> GroundCalibration:
        """Fit image -> ground from >= 4 pairs; ``image_size`` (w, h) of the points (default: the
        frame's). Refuses degenerate or inconsistent sets with :class:`CalibrationError`."""
        img = np.asarray(image_pts, np.float64).reshape(-1, 2)
        gnd = np.asarray(ground_pts, np.float64).reshape(-1, 2)
        size = image_size or (frame_size[1], frame_size[0])
        check_point_set(img, gnd, size)
        h_img = fit_homography(img, gnd)
        out = cls.from_homography(h_img, frame_size, image_size=size)
        out._attach_points(img, gnd, size, max_error_m)
        return out

    @classmethod
    def from_homography(cls, h: np.ndarray, frame_size: tuple[int, int], *,
                        image_size: tuple[int, int] | None = None) -> GroundCalibration:
        """Use a known image -> ground homography given for pixels of ``image_size`` (w, h)."""
        h = np.asarray(h, np.float64)
        if h.shape != (3, 3) or not np.all(np.isfinite(h)) or abs(np.linalg.det(h)) < 1e-300:
            raise CalibrationError("bad_homography", f"homography must be a finite invertible 3x3 "
                                   f"matrix, got {h.tolist()}")
        fh, fw = frame_size
        iw, ih = image_size or (fw, fh)
        sx, sy = iw / fw, ih / fh
        if abs(sx / sy - 1.0) > 0.01:
            raise CalibrationError("image_size_mismatch", f"calibration image {iw}x{ih} and frames "
                                   f"{fw}x{fh} differ in aspect ratio; recalibrate at this size")
        # frame pixel -> calibration-image pixel, then image -> ground
        hf = h @ np.diag([sx, sy, 1.0])
        hf = hf / np.linalg.norm(hf)
        # the ground side of the horizon: where the image centre's bottom edge lies, unless points
        # (attached later) say otherwise; a camera sees the floor at the bottom of its frame
        _, w = apply_homography(hf, np.array([[fw / 2, fh]]))
        sign = 1.0 if w[0] >= 0 else -1.0
        return cls(frame_size=(fh, fw), homography=hf, _ground_sign=sign)

    @classmethod
    def from_perspective_map(cls, pmap: np.ndarray, frame_size: tuple[int, int], *,
                             units_per_m: float,
                             kind: PerspectiveKind = "area_weight",
                             ) -> GroundCalibration:
        """Use a per-pixel scale map (any resolution with the frame's aspect ratio)."""
        pmap = np.asarray(pmap)
        if pmap.ndim != 2 or pmap.size == 0:
            raise CalibrationError("bad_perspective_map",
                                   f"perspective map must be a 2-D array, got shape {pmap.shape}")
        mh, mw = pmap.shape
        fh, fw = frame_size
        if abs((mw / mh) / (fw / fh) - 1.0) > 0.01:
            raise CalibrationError("image_size_mismatch", f"perspective map {mw}x{mh} and frames "
                                   f"{fw}x{fh} differ in aspect ratio")
        area = perspective_pixel_area_m2(pmap, units_per_m, kind)
        if not np.any(area > 0):
            raise CalibrationError("bad_perspective_map", "perspective map has no positive values")
        return cls(frame_size=(fh, fw), pixel_area=area)

    def _attach_points(self, img: np.ndarray, gnd: np.ndarray, image_size: tuple[int, int],
                       max_error_m: float, stale_hint: str = "") -> None:
        assert self.homography is not None
        fh, fw = self.frame_size
        scale = np.array([fw / image_size[0], fh / image_size[1]])
        img_f = img * scale
        mapped, w = apply_homography(self.homography, img_f)
        if np.any(np.abs(w) < HORIZON_EPS * np.abs(w).max()) or not (np.all(w > 0) or np.all(w < 0)):
            raise CalibrationError("inconsistent_points", "the fitted plane puts calibration points "
                                   "on both sides of its horizon: image and ground points do not "
                                   "match (wrong order, or a point not on the floor?)" + stale_hint)
        self._ground_sign = 1.0 if w[0] > 0 else -1.0
        back, _ = apply_homography(np.linalg.inv(self.homography), gnd)
        err_m = np.linalg.norm(mapped - gnd, axis=1)
        err_px = np.linalg.norm((back - img_f) / scale, axis=1)  # in calibration-image pixels
        worst = int(np.argmax(err_m))
        self.report = FitReport(errors_m=err_m, errors_px=err_px,
                                rms_m=float(np.sqrt((err_m ** 2).mean())), max_m=float(err_m.max()),
                                rms_px=float(np.sqrt((err_px ** 2).mean())), worst_index=worst,
                                exact=len(img) == 4)
        self.image_points, self.ground_points = img_f, gnd
        if err_m[worst] > max_error_m:
            raise CalibrationError("reprojection_error", f"point {worst} is {err_m[worst]:.3f} m "
                                   f"from where the fitted plane puts it (bound "
                                   f"max_reprojection_error_m={max_error_m:g}, rms "
                                   f"{self.report.rms_m:.3f} m): the points are inconsistent" + stale_hint,
                                   report=self.report)

    # ---- mapping ------------------------------------------------------------------------------
    def image_to_ground(self, pts_px: np.ndarray) -> np.ndarray:
        """Frame pixels (n, 2) -> ground metres (n, 2); NaN for points on or above the horizon."""
        self._need_h("image_to_ground")
        g, w = apply_homography(self.homography, pts_px)
        g[w * self._ground_sign <= 0] = np.nan
        return g

    def ground_to_image(self, pts_m: np.ndarray) -> np.ndarray:
        """Ground metres (n, 2) -> frame pixels (n, 2) (NaN for points behind the camera)."""
        self._need_h("ground_to_image")
        hinv = np.linalg.inv(self.homography)
        p, _ = apply_homography(hinv, pts_m)
        # a ground point behind the camera lands on the sky side of the horizon: its image point
        # maps back through H with w of the wrong sign
        with np.errstate(invalid="ignore"):
            _, w_back = apply_homography(self.homography, p)
        p[~(w_back * self._ground_sign > 0) | ~np.all(np.isfinite(p), axis=1)] = np.nan
        return p

    def horizon(self) -> tuple[float, float, float] | None:
        """The horizon line ``a*x + b*y + c = 0`` in frame pixels (ground side: sign of
        ``a*x + b*y + c`` equals :attr:`ground_sign`), or None for a perspective map."""
        if self.homography is None:
            return None
        a, b, c = self.homography[2]
        return float(a), float(b), float(c)

    @property
    def ground_sign(self) -> float:
        return self._ground_sign

    def _need_h(self, what: str) -> None:
        if self.homography is None:
            raise CalibrationError("no_calibration", f"{what} needs a homography calibration "
                                   "(this camera is calibrated with a perspective map)")

    # ---- areas --------------------------------------------------------------------------------
    def cell_area_m2(self, map_shape: tuple[int, int], cell_pixels: float) -> np.ndarray:
        """Ground area (m^2, float64) of every cell of a ``map_shape`` density map.

        Cells are clipped to the frame (the last row/column may be partial). A cell touching or
        above the horizon, with any excluded perspective-map pixel, or (homography) whose floor is
        seen coarser than ``max_m_per_px`` metres per pixel along the image rows gets 0:
        excluded, never divided by. Cached per (shape, cell size).
        """
        key = ((int(map_shape[0]), int(map_shape[1])), float(cell_pixels))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if cell_pixels <= 0:
            raise ValueError(f"cell_pixels must be > 0, got {cell_pixels}")
        fh, fw = self.frame_size
        rows, cols = key[0]
        ys = np.minimum(np.arange(rows + 1) * cell_pixels, fh)
        xs = np.minimum(np.arange(cols + 1) * cell_pixels, fw)
        if self.homography is not None:
            area = self._cell_area_h(xs, ys)
        else:
            area = self._cell_area_map(xs, ys)
        area.setflags(write=False)
        self._cache[key] = area
        return area

    def _cell_area_h(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        assert self.homography is not None
        gx, gy = np.meshgrid(xs, ys)
        g, w = apply_homography(self.homography, np.stack([gx.ravel(), gy.ravel()], axis=1))
        shape = (len(ys), len(xs))
        w = (w * self._ground_sign).reshape(shape)
        X, Y = g[:, 0].reshape(shape), g[:, 1].reshape(shape)
        good = w > HORIZON_EPS * max(float(np.abs(w).max()), 1e-300)
        ok = good[:-1, :-1] & good[:-1, 1:] & good[1:, 1:] & good[1:, :-1]
        with np.errstate(invalid="ignore"):
            # corners in order: top-left, top-right, bottom-right, bottom-left
            x0, x1, x2, x3 = X[:-1, :-1], X[:-1, 1:], X[1:, 1:], X[1:, :-1]
            y0, y1, y2, y3 = Y[:-1, :-1], Y[:-1, 1:], Y[1:, 1:], Y[1:, :-1]
            a = 0.5 * np.abs((x0 * y1 - x1 * y0) + (x1 * y2 - x2 * y1)
                             + (x2 * y3 - x3 * y2) + (x3 * y0 - x0 * y3))
            keep = ok & np.isfinite(a)
            if self.max_m_per_px is not None:
                # metres per pixel along the image rows (mean of the cell's top and bottom edges):
                # the scale people appear at, what decides whether they can be counted at all
                top = np.hypot(x1 - x0, y1 - y0)
                bottom = np.hypot(x2 - x3, y2 - y3)
                across = 0.5 * (top + bottom) / np.maximum(np.diff(xs), 1e-12)[None, :]
                keep &= across <= self.max_m_per_px
        return np.where(keep, a, 0.0)

    def _cell_area_map(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        assert self.pixel_area is not None
        mh, mw = self.pixel_area.shape
        fh, fw = self.frame_size
        u, v = xs * (mw / fw), ys * (mh / fh)
        total = _rect_integrals(_integral(self.pixel_area), u, v)
        bad = _rect_integrals(_integral((self.pixel_area <= 0).astype(np.float64)), u, v)
        # map pixels cover (mw/fw)*(mh/fh) of a frame pixel each: the integral is already in m^2
        return np.where(bad > 1e-9, 0.0, np.maximum(total, 0.0))

    def density_m2(self, density_map: np.ndarray, cell_pixels: float) -> np.ndarray:
        """People per m^2 in each cell (float32); 0 where the cell has no ground area."""
        dm = np.asarray(density_map)
        area = self.cell_area_m2(dm.shape, cell_pixels)
        out = np.zeros(dm.shape, np.float64)
        np.divide(dm, area, out=out, where=area > 0)
        return out.astype(np.float32)

    def camera_density_m2(self, density_map: np.ndarray, cell_pixels: float) -> float | None:
        """Mean people per m^2 over the ground region (count in cells with area / their area)."""
        dm = np.asarray(density_map, np.float64)
        area = self.cell_area_m2(dm.shape, cell_pixels)
        total = float(area.sum())
        return float(dm[area > 0].sum()) / total if total > 0 else None

    def polygon_area_m2(self, points_normalised: Sequence[Sequence[float]]) -> float:
        """Ground area (m^2) of a zone polygon given in normalised image coords (0..1).

        Homography: the exact area of the mapped polygon (shoelace). A polygon touching or above
        the horizon has unbounded ground area and is refused (``reason="above_horizon"``).
        Perspective map: the integral of the per-pixel area over the polygon (exact across each
        row, 8 sub-rows per map pixel).
        """
        p = np.asarray(points_normalised, np.float64).reshape(-1, 2)
        if len(p) < 3:
            raise ValueError(f"a zone polygon needs at least 3 points, got {len(p)}")
        fh, fw = self.frame_size
        if self.homography is not None:
            px = p * [fw, fh]
            g, w = apply_homography(self.homography, px)
            w = w * self._ground_sign
            if np.any(w <= HORIZON_EPS * np.abs(w).max()):
                a, b, c = self.horizon() or (0, 0, 0)
                row = -(a * fw / 2 + c) / b if b else float("nan")
                raise CalibrationError("above_horizon", f"zone polygon {p.tolist()} reaches the "
                                       f"horizon (near image row {row:.0f} at mid-width): its ground "
                                       "area is unbounded; keep zones below the horizon")
            return _shoelace(g)
        assert self.pixel_area is not None
        mh, mw = self.pixel_area.shape
        return _polygon_integral(self.pixel_area, p * [mw, mh])


def perspective_pixel_area_m2(pmap: np.ndarray, units_per_m: float,
                              kind: PerspectiveKind) -> np.ndarray:
    """Floor area in m^2 of each pixel of a perspective map; 0 where the map is not > 0.

    ``kind="area_weight"`` (Mall, UCSD): ``p = (s_ref / s)^2`` where ``s`` is the image scale
    (pixels per metre) of an upright person standing at that pixel, interpolated linearly between
    reference people, and ``s_ref`` its value where ``p == 1``. It normalises the image area of
    people, not of floor: a floor patch is also foreshortened along the view. For a flat floor seen
    by a pinhole camera, ``s`` is proportional to 1/depth and a pixel's floor area to depth^3 (the
    Jacobian of the image -> floor homography is det(H) / w^3 with w proportional to 1/depth), so
    floor area = ``A_ref * p^1.5``: one constant, ``A_ref = 1 / units_per_m^2``, the floor area of
    one pixel where ``p == 1`` (``units_per_m`` = square root of the pixels covered by 1 m^2 of
    floor there). The Mall map is of this kind: constant along rows, ``1/sqrt(p)`` linear in the
    row to 3e-5 (horizon near row -142), p = 1 near row 405 and 14.8 on the top row.

    ``kind="ground_area_weight"``: ``p`` is proportional to a pixel's floor area; area = p / u^2.

    ``kind="pixels_per_unit"``: ``p`` = image pixels spanned by one unit of floor length at that
    pixel, the same in every direction (ignores foreshortening), ``units_per_m`` = units per
    metre. Pixel area = ``1 / (p * units_per_m)^2``.
    """
    p = np.asarray(pmap, np.float64)
    good = np.isfinite(p) & (p > 0)
    out = np.zeros(p.shape, np.float64)
    if kind == "area_weight":
        out[good] = p[good] ** 1.5 / units_per_m ** 2
    elif kind == "ground_area_weight":
        out[good] = p[good] / units_per_m ** 2
    elif kind == "pixels_per_unit":
        out[good] = 1.0 / (p[good] * units_per_m) ** 2
    else:
        raise ValueError(f"unknown perspective kind {kind!r}")
    return out


def zone_density_m2(count: float, area_m2: float | None) -> float | None:
    """People per m^2 of a zone: ``count / area``; None when the zone has no usable ground area.

    Example: ``zone_density_m2(30.0, 15.0) == 2.0``; ``zone_density_m2(30.0, 0.0) is None``.
    """
    if area_m2 is None or not np.isfinite(area_m2) or area_m2 <= 0:
        return None
    return float(count) / float(area_m2)


def _shoelace(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _integral(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.float64)
    out[1:, 1:] = np.cumsum(np.cumsum(a, axis=0), axis=1)
    return out


def _rect_integrals(c: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Integrals of a piecewise-constant map over the rectangles of grid lines ``u`` x ``v``.

    ``c`` is the map's summed-area table; it is bilinear inside each map pixel, so bilinear
    interpolation of it gives the exact integral up to any fractional coordinate.
    """
    def interp_axis(tab: np.ndarray, q: np.ndarray, axis: int) -> np.ndarray:
        n = tab.shape[axis] - 1
        q = np.clip(q, 0, n)
        i0 = np.minimum(np.floor(q).astype(int), n - 1)
        f = q - i0
        t0, t1 = np.take(tab, i0, axis=axis), np.take(tab, i0 + 1, axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        return t0 + (t1 - t0) * f.reshape(shape)

    f = interp_axis(interp_axis(c, v, 0), u, 1)  # F(v_i, u_j)
    return f[1:, 1:] - f[:-1, 1:] - f[1:, :-1] + f[:-1, :-1]


def _polygon_integral(a: np.ndarray, poly: np.ndarray, sub_rows: int = 8) -> float:
    """Integral of piecewise-constant ``a`` over a polygon (map pixel coords): exact along x."""
    mh, mw = a.shape
    row_cum = np.zeros((mh, mw + 1))
    row_cum[:, 1:] = np.cumsum(a, axis=1)
    x0, x1 = poly[:, 0], np.roll(poly[:, 0], -1)
    y0, y1 = poly[:, 1], np.roll(poly[:, 1], -1)
    lo, hi = max(0.0, poly[:, 1].min()), min(float(mh), poly[:, 1].max())
    total = 0.0
    cols = np.arange(mw + 1)
    r0, r1 = int(np.floor(lo)), int(np.ceil(hi))
    for r in range(r0, min(r1, mh)):
        for k in range(sub_rows):
            y = r + (k + 0.5) / sub_rows
            if y < lo or y > hi:
                continue
            # edges crossing this scanline (half-open rule avoids double-counting vertices)
            m = (y0 <= y) != (y1 <= y)
            if not np.any(m):
                continue
            xs = np.sort(x0[m] + (y - y0[m]) * (x1[m] - x0[m]) / (y1[m] - y0[m]))
            xs = np.clip(xs, 0, mw)
            cum = np.interp(xs, cols, row_cum[r])
            total += float((cum[1::2] - cum[0::2]).sum()) / sub_rows
    return total


__all__ = [
    "CalibrationError", "FitReport", "GroundCalibration", "apply_homography", "check_point_set",
    "fit_homography", "perspective_pixel_area_m2", "zone_density_m2",
]
