"""A camera's labels file for site adaptation (``crowdstream adapt`` reads it): frames saved at the
resolution the pipeline decodes them, each labelled with head points, a count, or counts per zone.

Layout (the one format, read and written by ``engines.train.sitelabels``; this module adds what
the console needs on top: saving a frame, checking a label against the camera's zones)::

    <run_dir>/labels/<camera>/labels.json       (<camera>: engines.paths.safe_name, the name
    <run_dir>/labels/<camera>/<image>.jpg        itself when it is a plain file name)

    {"camera": "<name>", "images": [
        {"image": "<file>.jpg", "points": [[x, y], ...]},        # head points, image pixels
        {"image": "<file>.jpg", "count": n},                      # or the whole frame's count
        {"image": "<file>.jpg", "zone_counts": {"<zone>": n}}]}   # or counts per zone

Pixels are those of the saved image (the full decoded frame). The operator console writes it
(``save_label_image``, then ``set_label`` once the operator clicked heads or typed a count);
writes are atomic (a temporary file renamed over the old one).

Example::

    name = save_label_image(cfg, "mall", jpeg_bytes, frame_index=812)
    set_label(cfg, "mall", {"image": name, "points": [[120.5, 88.0], [301.0, 140.2]]})
    read_labels(cfg, "mall")["images"][-1]
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from engines.train.sitelabels import (
    LABELS_FILE,
    LabelsError,
    entry_from_dict,
    labels_path,
    write_labels,
)
from engines.train.sitelabels import read_labels as read_site_labels
from pipeline.config import AppConfig

MAX_POINTS = 5000  # per image: far above any real frame, bounds a request
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.jpg$")
_lock = threading.Lock()  # the console serves requests on threads: one writer at a time


class LabelError(LabelsError):
    """A label the file cannot take; the message says which field and why."""


def labels_dir(cfg: AppConfig, camera: str) -> Path:
    """``<run_dir>/labels/<camera>`` (a file-safe form of unusual camera names)."""
    return labels_path(cfg.run_dir, camera).parent


def read_labels(cfg: AppConfig, camera: str) -> dict[str, Any]:
    """The camera's labels document (an empty one when there is no file yet)."""
    try:
        return read_site_labels(labels_path(cfg.run_dir, camera), camera,
                                missing_ok=True).to_dict()
    except LabelsError as e:
        raise LabelError(f"{e}; move it away to start a new one") from None


def save_label_image(cfg: AppConfig, camera: str, jpeg: bytes, frame_index: int) -> str:
    """Store a frame (JPEG bytes, full resolution) beside the labels file; returns its name."""
    folder = labels_dir(cfg, camera)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"frame_{int(frame_index):08d}_{stamp}.jpg"
    _atomic_write(folder / name, jpeg)
    return name


def image_path(cfg: AppConfig, camera: str, image: str) -> Path:
    """The path of a saved image; ``LabelError`` for a name that is not one of ours."""
    if not _IMAGE_NAME.match(image) or image.startswith("."):
        raise LabelError(f"image: {image!r} is not a saved frame's name")
    return labels_dir(cfg, camera) / image


def set_label(cfg: AppConfig, camera: str, entry: dict[str, Any],
              image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Add or replace the label of one saved image; returns the entry as stored. ``entry`` holds
    ``image`` and exactly one of ``points`` / ``count`` / ``zone_counts``; ``image_size`` (w, h)
    bounds the points."""
    clean = check_entry(cfg, camera, entry, image_size)
    with _lock:
        path = labels_path(cfg.run_dir, camera)
        labels = read_site_labels(path, camera, missing_ok=True)
        write_labels(labels.upsert(entry_from_dict(clean)))
    return clean


def check_entry(cfg: AppConfig, camera: str, entry: dict[str, Any],
                image_size: tuple[int, int] | None) -> dict[str, Any]:
    """The entry in its stored form, or ``LabelError`` naming the field."""
    image = str(entry.get("image", ""))
    if not image_path(cfg, camera, image).is_file():
        raise LabelError(f"image: {image!r} was not saved for camera {camera!r}")
    kinds = [k for k in ("points", "count", "zone_counts") if entry.get(k) is not None]
    if len(kinds) != 1:
        raise LabelError("give exactly one of points, count, zone_counts")
    kind = kinds[0]
    if kind == "points":
        return {"image": image, "points": _points(entry["points"], image_size)}
    if kind == "count":
        return {"image": image, "count": _count(entry["count"], "count")}
    zc = entry["zone_counts"]
    zones = {z.name for z in cfg.cameras[camera].zones} if camera in cfg.cameras else set()
    if not isinstance(zc, dict) or not zc:
        raise LabelError("zone_counts: expected {zone: count, ...}")
    for z in zc:
        if z not in zones:
            raise LabelError(f"zone_counts: {z!r} is not a zone of camera {camera!r}")
    return {"image": image, "zone_counts": {str(z): _count(n, f"zone_counts.{z}")
                                            for z, n in zc.items()}}


def _count(v: Any, key: str) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise LabelError(f"{key}: expected a number >= 0, got {v!r}")
    return int(v) if float(v).is_integer() else float(v)


def _points(pts: Any, size: tuple[int, int] | None) -> list[list[float]]:
    if not isinstance(pts, list) or len(pts) > MAX_POINTS:
        raise LabelError(f"points: expected a list of at most {MAX_POINTS} [x, y]")
    out = []
    for i, p in enumerate(pts):
        if (not isinstance(p, (list, tuple)) or len(p) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in p)):
            raise LabelError(f"points[{i}]: expected [x, y] pixels, got {p!r}")
        x, y = float(p[0]), float(p[1])
        if size is not None and not (0 <= x < size[0] and 0 <= y < size[1]):
            raise LabelError(f"points[{i}]: ({x:g}, {y:g}) is off the {size[0]}x{size[1]} image")
        out.append([round(x, 2), round(y, 2)])
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


__all__ = ["LABELS_FILE", "LabelError", "check_entry", "image_path", "labels_dir", "read_labels",
           "save_label_image", "set_label"]
