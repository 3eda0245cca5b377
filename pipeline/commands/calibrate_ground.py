"""``crowdstream calibrate ground CAMERA --config CONFIG.yaml``: fit and store a ground plane.

Reads the camera's ``calibration.points`` (or ``--point X,Y:GX,GY`` given 4+ times: image pixel ->
ground metres), fits the image -> ground homography, prints each point's reprojection error and the
overall error, and refuses degenerate or inconsistent sets with the reason (exit status 1). On
success the homography and the image size (and the ``--point`` points) are written into the camera's
``calibration:`` section of the config file in place, keeping its comments and layout; where the
layout is beyond the text editor (flow style, a bare-URL camera) a re-dumped copy without comments
goes to ``CONFIG.calibrated.yaml`` instead. ``--output`` writes elsewhere, ``--dry-run`` nowhere.
``--preview OUT.png`` draws the calibration on the camera's first frame (or ``--image``).

The fit, check and store are two functions, ``fit_ground`` and ``store_calibration``, which the
operator console's calibration picker calls too: both paths refuse and store exactly alike.

Example::

    crowdstream calibrate ground lobby --config configs/site.yaml --preview lobby.png
    crowdstream calibrate ground lobby --config site.yaml \\
        --point 102,410:0,0 --point 530,402:6,0 --point 470,180:6,12 --point 160,185:0,12
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from calibrate.ground import GroundCalibration
    from pipeline.config import CalibrationConfig, ZoneConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("camera", help="camera name under 'cameras:' in the config")
    p.add_argument("--config", required=True, metavar="CONFIG.yaml", help="the run config")
    p.add_argument("--point", action="append", default=[], metavar="X,Y:GX,GY",
                   help="image pixel X,Y lies at ground GX,GY metres (4 or more; replaces the "
                        "config's points)")
    p.add_argument("--image-size", metavar="WxH", default=None,
                   help="size of the image the points were taken on (default: the config's "
                        "image_size, else the frame's)")
    p.add_argument("--max-error", type=float, default=None, metavar="M",
                   help="refuse above this reprojection error in metres (default: the config's "
                        "max_reprojection_error_m)")
    p.add_argument("--preview", metavar="OUT.png", default=None,
                   help="write a PNG of the frame with points, grid and zones")
    p.add_argument("--image", metavar="IMAGE", default=None,
                   help="frame to draw on / take the size from (default: the camera's first frame)")
    p.add_argument("--grid", type=float, default=1.0, metavar="M", help="grid spacing in metres")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--output", metavar="PATH", default=None,
                     help="write the updated config here instead of updating CONFIG in place")
    out.add_argument("--dry-run", action="store_true", help="fit and report, write no config")


def parse_point(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """``"X,Y:GX,GY"`` -> ((X, Y), (GX, GY)); ValueError naming the expected form otherwise."""
    try:
        img, gnd = text.split(":")
        x, y = (float(v) for v in img.split(","))
        gx, gy = (float(v) for v in gnd.split(","))
    except ValueError:
        raise ValueError(f"--point {text!r}: expected X,Y:GX,GY (pixels : metres), "
                         "e.g. 102,410:0,0") from None
    return (x, y), (gx, gy)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image-size {text!r}: expected WxH, e.g. 640x480") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--image-size {text!r}: width and height must be > 0")
    return w, h


def _fail(msg: str, code: int = 2) -> int:
    print(f"crowdstream calibrate ground: {msg}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from calibrate.ground import CalibrationError, GroundCalibration
    from calibrate.preview import render_preview, write_png
    from engines.log import get_logger
    from engines.video import SourceError, read_first_frame
    from pipeline.config import CalibrationConfig, load_config

    cfg = load_config(args.config)
    name = args.camera
    if name not in cfg.cameras:
        return _fail(f"{args.config}: no camera {name!r} under 'cameras' "
                     f"(have: {', '.join(sorted(cfg.cameras))})")
    cam = cfg.cameras[name]
    log = get_logger("calibrate", camera=name)
    cal_cfg = cam.calibration or CalibrationConfig()
    try:
        cli_points = [parse_point(t) for t in args.point]
        size = parse_size(args.image_size) if args.image_size else None
    except ValueError as e:
        return _fail(str(e))

    frame: np.ndarray | None = None

    def get_frame() -> np.ndarray:
        nonlocal frame
        if frame is None:
            if args.image:
                import cv2

                frame = cv2.imread(args.image, cv2.IMREAD_COLOR)
                if frame is None:
                    raise ValueError(f"--image {args.image}: not a readable image")
            else:
                try:
                    frame = read_first_frame(cam)
                except SourceError as e:  # the camera's own reason, as a command error
                    raise ValueError(f"camera {name}: {e}") from None
        return frame

    if cli_points:
        img = np.array([p[0] for p in cli_points], float)
        gnd = np.array([p[1] for p in cli_points], float)
    else:
        img = np.array([p.image for p in cal_cfg.points], float).reshape(-1, 2)
        gnd = np.array([p.ground for p in cal_cfg.points], float).reshape(-1, 2)
        size = size or (tuple(cal_cfg.image_size) if cal_cfg.image_size else None)

    if not len(img) and cal_cfg.perspective_map:
        return _perspective_only(args, cam, cal_cfg, get_frame)
    if not len(img):
        return _fail(f"camera {name!r} has no calibration points: give --point X,Y:GX,GY (4 or "
                     f"more) or cameras.{name}.calibration.points in {args.config}")
    try:
        if size is None or args.preview:
            fh, fw = get_frame().shape[:2]
            size = size or (fw, fh)
    except ValueError as e:
        return _fail(f"camera {name!r}: {e} (give --image-size WxH or --image)")

    bound = args.max_error if args.max_error is not None else cal_cfg.max_reprojection_error_m
    print(f"camera {name}: fitting {len(img)} points on a {size[0]}x{size[1]} image "
          f"(bound {bound:g} m)")
    try:
        fit = fit_ground(img, gnd, size, bound, store_points=bool(cli_points), zones=cam.zones)
    except CalibrationError as e:
        if e.report is not None:
            print("\n".join(e.report.lines(img, gnd)))
        log.warning("calibration refused", reason=e.reason)
        return _fail(f"refused ({e.reason}): {e.message}", 1)
    print("\n".join(fit.lines))
    if not args.dry_run:
        try:
            where = store_calibration(Path(args.config), name, fit,
                                      Path(args.output) if args.output else None)
        except OSError as e:
            return _fail(f"cannot write the config: {e}")
        if where.note:
            print(f"note: {where.note}")
        print(f"stored: cameras.{name}.calibration.{{{', '.join(fit.updates)}}} in {where.path}")
        log.info("calibration stored", file=str(where.path), points=len(img),
                 rms_m=round(fit.rms_m, 4))
    if args.preview:
        try:
            fr = get_frame()
            pcal = GroundCalibration.from_config(fit.stored, fr.shape[:2], camera=name)
            out = write_png(args.preview, render_preview(fr, pcal, zones=cam.zones,
                                                         grid_m=args.grid, title=f"camera {name}"))
        except (ValueError, OSError) as e:
            return _fail(f"preview: {e}")
        print(f"preview: {out} ({fr.shape[1]}x{fr.shape[0]})")
    return 0


@dataclass
class GroundFit:
    """A fitted ground calibration and what storing it writes (``fit_ground``)."""

    cal: GroundCalibration
    image_size: tuple[int, int]  # (w, h) of the image the points were taken on
    updates: dict[str, Any]  # the keys written into the camera's calibration: section
    stored: CalibrationConfig  # the calibration as the run will read it back
    lines: list[str] = field(default_factory=list)  # the report, as the command prints it
    horizon_row: float | None = None  # image row of the horizon at mid-width

    @property
    def rms_m(self) -> float:
        return float(self.cal.report.rms_m) if self.cal.report is not None else 0.0


def fit_ground(img: np.ndarray, gnd: np.ndarray, size: tuple[int, int], bound: float, *,
               store_points: bool = True, zones: tuple[ZoneConfig, ...] = ()) -> GroundFit:
    """Fit image pixels ``img`` (N x 2) -> ground metres ``gnd`` on an image of ``size`` (w, h)
    and check it (``calibrate.ground.GroundCalibration.from_points``); raises
    ``CalibrationError`` (with the per-point report when the fit got that far). The updates hold
    the homography and image size, and the points when ``store_points``."""
    import numpy as np

    from calibrate.ground import CalibrationError, GroundCalibration
    from pipeline.config import CalibrationConfig, GroundPointConfig

    cal = GroundCalibration.from_points(img, gnd, (size[1], size[0]), image_size=size,
                                        max_error_m=bound)
    assert cal.report is not None and cal.homography is not None
    lines = cal.report.lines(img, gnd)
    row = None
    line = cal.horizon()
    if line is not None and abs(line[1]) > 1e-15:
        row = -(line[0] * size[0] / 2 + line[2]) / line[1]
        where = "above the image" if row < 0 else ("below the image" if row > size[1] else "in view")
        lines.append(f"  horizon: image row {row:.0f} at mid-width ({where})")
    h = cal.homography / cal.homography[2, 2] if abs(cal.homography[2, 2]) > 1e-12 \
        else cal.homography
    updates: dict[str, Any] = {"image_size": [int(size[0]), int(size[1])],
                               "homography": [[float(v) for v in r] for r in np.asarray(h)]}
    if store_points:
        updates["points"] = [{"image": [float(a) for a in i], "ground": [float(b) for b in g]}
                             for i, g in zip(img, gnd, strict=True)]
    stored = CalibrationConfig(
        points=[GroundPointConfig(image=(float(i[0]), float(i[1])),
                                  ground=(float(g[0]), float(g[1])))
                for i, g in zip(img, gnd, strict=True)],
        homography=updates["homography"], image_size=size,
        max_reprojection_error_m=max(bound, cal.report.max_m * 1.001 + 1e-9))
    for z in zones:
        try:
            lines.append(f"  zone {z.name}: {cal.polygon_area_m2(z.polygon):.2f} m²")
        except CalibrationError as e:
            lines.append(f"  zone {z.name}: no ground area ({e.message})")
    return GroundFit(cal, (int(size[0]), int(size[1])), updates, stored, lines, row)


@dataclass(frozen=True)
class Stored:
    """Where ``store_camera_keys`` wrote: ``path``; ``in_place`` False and a ``note`` when the
    layout made it write a full copy without comments instead."""

    path: Path
    in_place: bool
    note: str = ""


def store_calibration(config: Path, camera: str, fit: GroundFit,
                      output: Path | None = None) -> Stored:
    """Write a fit into the camera's ``calibration:`` section (``store_camera_keys``)."""
    n = len(fit.stored.points)
    comment = (f"image -> ground (m), {n} points, rms {fit.rms_m:.4f} m "
               f"(crowdstream calibrate ground)")
    return store_camera_keys(config, camera, fit.updates, {"homography": comment},
                             section="calibration", output=output, suffix=".calibrated.yaml")


def store_camera_keys(config: Path, camera: str, updates: dict[str, Any],
                      comments: dict[str, str] | None = None, *, section: str | None = None,
                      output: Path | None = None, suffix: str = ".edited.yaml") -> Stored:
    """``pipeline.config.write_camera_updates`` (the one config writer: comments kept, checked
    with the rules of ``config validate`` before it replaces the file), reported as ``Stored``."""
    from pipeline.config import write_camera_updates

    target, kept = write_camera_updates(config, camera, updates, comments, section=section,
                                        output=output,
                                        copy_suffix=suffix.removesuffix(".yaml"))
    note = "" if kept else (f"{config} has a layout the in-place editor does not handle; wrote a "
                            f"full copy without comments to {target}")
    return Stored(Path(target), kept, note)


def _perspective_only(args: argparse.Namespace, cam: Any, cal_cfg: Any, get_frame: Any) -> int:
    """A perspective-map calibration has nothing to fit: report its areas, draw the preview."""
    from calibrate.ground import CalibrationError, GroundCalibration
    from calibrate.preview import render_preview, write_png

    try:
        if args.preview or args.image:
            fh, fw = get_frame().shape[:2]
        else:
            import numpy as np

            fh, fw = np.load(cal_cfg.perspective_map, mmap_mode="r").shape
        cal = GroundCalibration.from_config(cal_cfg, (fh, fw), camera=args.camera)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    assert cal.pixel_area is not None
    print(f"camera {args.camera}: perspective map {cal_cfg.perspective_map} "
          f"({cal_cfg.perspective_kind}, {cal_cfg.perspective_units_per_m:g} units/m): "
          f"ground in view {cal.pixel_area.sum():.1f} m²; nothing to fit or store")
    for z in cam.zones:
        try:
            print(f"  zone {z.name}: {cal.polygon_area_m2(z.polygon):.2f} m²")
        except CalibrationError as e:
            print(f"  zone {z.name}: no ground area ({e.message})")
    if args.preview:
        out = write_png(args.preview, render_preview(get_frame(), cal, zones=cam.zones,
                                                     title=f"camera {args.camera}"))
        print(f"preview: {out}")
    return 0
