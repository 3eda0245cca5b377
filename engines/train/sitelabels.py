"""A camera's labeled frames: the one reader and writer of ``labels.json`` (the site labels file).

The format is fixed (the operator console writes it, ``crowdstream snapshot`` and ``crowdstream
labels import`` add to it, ``crowdstream adapt`` reads it). By default it lives at
``<run_dir>/labels/<camera>/labels.json`` with the images beside it as JPEG::

    {"camera": "lobby",
     "images": [{"image": "a.jpg", "points": [[x, y], ...]},     # head points
                {"image": "b.jpg", "count": 12},                   # a count for the frame
                {"image": "c.jpg", "zone_counts": {"door": 3}},    # counts for zones
                {"image": "d.jpg"}]}                               # saved, not labeled yet

Coordinates are pixels of the saved image, which is the frame as the pipeline decodes it, at
full resolution. A count (of the frame or of a zone) counts the people the pipeline would count:
those inside the camera's ROI, when it has one. An entry with points and a count must agree.
Keys this version does not know are kept as they are when the file is rewritten, so a newer
writer's fields survive an import. A wrong file is a one-line ``LabelsError`` naming the file and
the entry.

Example::

    labels = read_labels(labels_path("runs/site", "lobby"))
    for e in labels.labeled():
        print(e.image, e.kind, e.total)
    write_labels(labels.upsert(LabelEntry("snap.jpg")))
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

LABELS_FILE = "labels.json"


class LabelsError(ValueError):
    """A labels file (or one of its entries) is not in the format; the message says where."""


def labels_path(run_dir: str | os.PathLike[str], camera: str) -> Path:
    """The default labels file of ``camera``: ``<run_dir>/labels/<camera>/labels.json`` (the
    folder is ``engines.paths.safe_name(camera)``: the name itself when it is a plain file
    name)."""
    from engines.paths import safe_name

    return Path(run_dir) / "labels" / safe_name(camera) / LABELS_FILE


@dataclass(frozen=True)
class LabelEntry:
    """One saved frame and what is known about it (nothing, head points, a count, zone counts)."""

    image: str
    points: np.ndarray | None = None  # (n, 2) float32, x then y, pixels of the image
    count: float | None = None
    zone_counts: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys kept for the round trip

    @property
    def kind(self) -> str:
        """``points``, ``count``, ``zones`` or ``unlabeled`` (points win over counts)."""
        if self.points is not None:
            return "points"
        if self.count is not None:
            return "count"
        if self.zone_counts:
            return "zones"
        return "unlabeled"

    @property
    def total(self) -> float | None:
        """People in the frame (points or count); None for zone-only and unlabeled entries."""
        if self.points is not None:
            return float(len(self.points))
        return self.count

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image}
        if self.points is not None:
            out["points"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.points]
        if self.count is not None:
            out["count"] = int(self.count) if float(self.count).is_integer() else self.count
        if self.zone_counts:
            out["zone_counts"] = {k: int(v) if float(v).is_integer() else v
                                  for k, v in self.zone_counts.items()}
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


@dataclass(frozen=True)
class SiteLabels:
    """A camera's labels file: its entries in file order and where it is."""

    camera: str
    entries: tuple[LabelEntry, ...]
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def image_path(self, entry: LabelEntry) -> Path:
        return self.folder / entry.image

    def labeled(self) -> list[LabelEntry]:
        return [e for e in self.entries if e.kind != "unlabeled"]

    def get(self, image: str) -> LabelEntry | None:
        return next((e for e in self.entries if e.image == image), None)

    def upsert(self, entry: LabelEntry) -> SiteLabels:
        """A copy with ``entry`` replacing the entry of the same image (or appended)."""
        entries = list(self.entries)
        for i, e in enumerate(entries):
            if e.image == entry.image:
                entries[i] = entry
                return replace(self, entries=tuple(entries))
        return replace(self, entries=(*entries, entry))

    def to_dict(self) -> dict[str, Any]:
        return {"camera": self.camera, **{k: v for k, v in self.extra.items()
                                          if k not in ("camera", "images")},
                "images": [e.to_dict() for e in self.entries]}


def empty_labels(path: str | os.PathLike[str], camera: str) -> SiteLabels:
    return SiteLabels(camera, (), Path(path))


def read_labels(path: str | os.PathLike[str], camera: str | None = None, *,
                missing_ok: bool = False) -> SiteLabels:
    """Read and check a labels file; ``camera`` must match the file's own when given.

    ``missing_ok``: a file that does not exist yet reads as empty (for ``camera``).
    """
    path = Path(path)
    if not path.is_file():
        if missing_ok and camera is not None and not path.exists():
            return empty_labels(path, camera)
        raise LabelsError(f"{path}: labels file not found")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise LabelsError(f"{path}: expected {{\"camera\": NAME, \"images\": [...]}}")
    cam = raw.get("camera")
    if not isinstance(cam, str) or not cam.strip():
        raise LabelsError(f"{path}: 'camera' must name the camera the frames come from")
    if camera is not None and cam != camera:
        raise LabelsError(f"{path}: holds frames of camera {cam!r}, not {camera!r}")
    entries = [_entry(e, f"{path}: images[{i}]") for i, e in enumerate(raw["images"])]
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.image in seen:
            raise LabelsError(f"{path}: images[{i}]: image {e.image!r} is listed twice "
                              f"(images[{seen[e.image]}] too)")
        seen[e.image] = i
    extra = {k: v for k, v in raw.items() if k not in ("camera", "images")}
    return SiteLabels(cam, tuple(entries), path, extra)


def entry_from_dict(raw: Any, where: str = "entry") -> LabelEntry:
    """One ``images[i]`` entry of the format, checked (``LabelsError`` naming ``where``)."""
    return _entry(raw, where)


def _entry(raw: Any, where: str) -> LabelEntry:
    if not isinstance(raw, dict):
        raise LabelsError(f"{where}: expected a mapping with 'image'")
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip() or os.path.isabs(image) or ".." in \
            Path(image).parts:
        raise LabelsError(f"{where}: 'image' must be a file name beside the labels file, got "
                          f"{image!r}")
    points = None
    if raw.get("points") is not None:
        points = _points(raw["points"], where)
    count = None
    if raw.get("count") is not None:
        count = _number(raw["count"], f"{where}: count")
        if points is not None and count != len(points):
            raise LabelsError(f"{where}: 'count' is {raw['count']} but {len(points)} points "
                              "are listed")
    zones = None
    if raw.get("zone_counts") is not None:
        zc = raw["zone_counts"]
        if not isinstance(zc, dict) or not zc:
            raise LabelsError(f"{where}: 'zone_counts' must map zone names to counts")
        zones = {str(k): _number(v, f"{where}: zone_counts.{k}") for k, v in zc.items()}
    extra = {k: v for k, v in raw.items() if k not in ("image", "points", "count",
                                                        "zone_counts")}
    return LabelEntry(image, points, count, zones, extra)


def _points(raw: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise LabelsError(f"{where}: 'points' must be a list of [x, y] numbers") from None
    if arr.size == 0:
        return np.zeros((0, 2), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise LabelsError(f"{where}: 'points' must be a list of [x, y] pixel positions "
                          f"(>= 0), got shape {arr.shape}")
    return arr.astype(np.float32)


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise LabelsError(f"{where}: expected a count >= 0, got {v!r}")
    return float(v)


def write_labels(labels: SiteLabels) -> Path:
    """Write the file atomically (a reader never sees half a file); returns its path."""
    path = labels.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(labels.to_dict(), indent=1) + "\n")
    os.replace(tmp, path)
    return path


__all__ = ["LABELS_FILE", "LabelEntry", "LabelsError", "SiteLabels", "empty_labels",
           "entry_from_dict",
           "labels_path", "read_labels", "write_labels"]
