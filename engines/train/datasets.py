"""Readers for point-annotated crowd datasets: a dataset is a folder plus a format name.

Formats (``FORMATS``), each in its published layout:

- ``shanghaitech``: ``images/IMG_n.jpg`` + ``ground-truth/GT_IMG_n.mat`` (``image_info`` struct with
  ``location``); the folder is a split, e.g. ``part_B/train_data``.
- ``qnrf``: UCF-QNRF, ``img_0001.jpg`` + ``img_0001_ann.mat`` (``annPoints``) side by side
  (the folder is ``Train`` or ``Test``).
- ``nwpu``: NWPU-Crowd, ``images/0001.jpg`` + ``jsons/0001.json`` (``points``) or
  ``mats/0001.mat`` (``annPoints``); ``split`` picks the ids listed in ``<split>.txt``.
- ``jhu``: JHU-Crowd++, ``<split>/images/0001.jpg`` + ``<split>/gt/0001.txt`` (``x y w h o b``
  per line); the folder is the dataset root (with ``split``) or one split folder.
- ``json``: our own layout (``../shared/data``): ``points.json`` with
  ``{"images": [{"image", "points"}]}`` or ``train_points.json`` with
  ``{"frames": [{"frame_index", "image", "points"}]}`` (video frames of a fixed camera); images
  beside the JSON or under ``images/`` / ``frames_train/`` / ``frames/``. Frames may come from a
  video instead of image files: a top-level ``"video"`` (or one per entry), a path relative to the
  dataset folder, with each entry's 0-based ``frame_index`` in it; ``labels=`` names an
  annotation file kept elsewhere (our own scene labels live in the repo, the videos beside it).

Video frames are decoded by ``engines.video`` (the pipeline's own decoder), so a model trained
on them sees exactly the H.264 frames a camera delivers, not re-encoded JPEGs.

Every reader returns a list of ``Sample`` (image path + (n, 2) head points in pixels, x then y).
A wrong layout raises ``DatasetError`` naming what was expected where.

Example::

    samples = load_dataset("../shared/data/mall", "json", select="1-700")
    image = samples[0].load_rgb()          # HxWx3 uint8 RGB
    print(len(samples), samples[0].count)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("shanghaitech", "qnrf", "nwpu", "jhu", "json")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
    """The folder does not hold the layout its format promises; the message says what and where."""


@dataclass
class Sample:
    """One annotated image: where it is, its head points (x, y pixels) and a stable name."""

    name: str
    image_path: Path
    points: np.ndarray  # (n, 2) float32, x then y, pixels of the stored image
    frame_index: int | None = None  # for video frames: 0-based index in the sequence
    video: Path | None = None  # decode frame ``frame_index`` of this video instead of an image
    _cache: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def count(self) -> int:
        return int(self.points.shape[0])

    def load_rgb(self) -> np.ndarray:
        """Decode the image as HxWx3 uint8 RGB (kept in memory after ``cache()``)."""
        if self._cache is not None:
            return self._cache
        if self.video is not None:
            return _decode_frames(self.video, [self.frame_index or 0])[self.frame_index or 0]
        import cv2

        img = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{self.image_path}: cannot read the image (missing or not an image)")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def cache(self) -> None:
        """Decode once and keep the pixels (training re-reads every image each epoch)."""
        self._cache = self.load_rgb()


def cache_all(samples: Sequence[Sample]) -> None:
    """Decode and keep every sample's pixels; each video is decoded once, in one pass."""
    by_video: dict[Path, list[Sample]] = {}
    for s in samples:
        if s._cache is not None:
            continue
        if s.video is not None:
            by_video.setdefault(s.video, []).append(s)
        else:
            s.cache()
    for video, group in by_video.items():
        frames = _decode_frames(video, [s.frame_index or 0 for s in group])
        for s in group:
            s._cache = frames[s.frame_index or 0]


def _decode_frames(video: Path, indices: Sequence[int]) -> dict[int, np.ndarray]:
    from engines.video import SourceError, read_frames

    try:
        got = dict(read_frames(str(video), indices))
    except SourceError as e:
        raise DatasetError(f"{video}: {e}") from None
    missing = sorted(set(indices) - set(got))
    if missing:
        raise DatasetError(f"{video}: frame(s) {missing[:5]} not in the video "
                           f"({len(got)} of {len(set(indices))} decoded)")
    return got


def load_dataset(root: str | Path, fmt: str, *, split: str | None = None,
                 select: str | None = None, video: str | Path | None = None,
                 labels: str | Path | None = None) -> list[Sample]:
    """Read the dataset in ``root`` laid out as ``fmt``; ``select`` keeps 1-based positions.

    ``select`` is a range list such as ``"1-700"`` or ``"1-100,201-300"`` over the samples in their
    natural order (frame order for videos, numeric file order otherwise). ``video`` (json format)
    decodes every entry's ``frame_index`` from that video (relative to ``root``) instead of
    reading its image file; ``labels`` is an annotation file to use instead of the one in
    ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    readers = {"shanghaitech": _read_shanghaitech, "qnrf": _read_qnrf, "nwpu": _read_nwpu,
               "jhu": _read_jhu}
    if fmt == "json":
        samples = _read_json(root, split, Path(video) if video else None,
                             Path(labels) if labels else None)
    elif fmt in readers:
        if video or labels:
            raise DatasetError(f"video/labels apply to the json format, not {fmt!r}")
        samples = readers[fmt](root, split)
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not samples:
        raise DatasetError(f"{root}: no annotated images found for format {fmt!r}")
    if select:
        keep = parse_ranges(select, len(samples))
        samples = [samples[i] for i in keep]
    return samples


def parse_ranges(text: str, n: int) -> list[int]:
    """``"1-3,7"`` -> ``[0, 1, 2, 6]`` (1-based inclusive ranges to 0-based indices, checked)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise DatasetError(f"select {text!r}: {part!r} is not N or N-M (1-based positions)")
        a = int(m.group(1))
        b = int(m.group(2) or a)
        if not 1 <= a <= b <= n:
            raise DatasetError(f"select {text!r}: {part!r} is outside 1-{n}")
        out.extend(range(a - 1, b))
    return out


def holdout_split(samples: Sequence[Sample], fraction: float, seed: int = 0
                  ) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, validation) with ``fraction`` of the samples held out at random."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * fraction))
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


# ----------------------------------------------------------------------------------- helpers

def _natural_key(path: Path) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _points_array(raw: Any, where: str) -> np.ndarray:
    arr = np.asarray(raw, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise DatasetError(f"{where}: expected head points as an (n, 2) list of [x, y], "
                           f"got shape {arr.shape}")
    return arr[:, :2].astype(np.float32)


def _find_points_in_mat(obj: Any) -> np.ndarray | None:
    """Dig the (n, 2) location array out of a MATLAB struct/cell as loaded by scipy."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.names:
            if "location" in obj.dtype.names:
                return _find_points_in_mat(obj["location"])
            for name in obj.dtype.names:
                found = _find_points_in_mat(obj[name])
                if found is not None:
                    return found
            return None
        if obj.dtype == object:
            for item in obj.flat:
                found = _find_points_in_mat(item)
                if found is not None:
                    return found
            return None
        if obj.ndim == 2 and obj.shape[1] == 2 and np.issubdtype(obj.dtype, np.floating):
            return obj
        if obj.size == 0 and np.issubdtype(obj.dtype, np.floating):
            return np.zeros((0, 2))
    return None


def _load_mat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except Exception as e:  # scipy raises several types for a bad file
        raise DatasetError(f"{path}: cannot read the MATLAB file ({e})") from e


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: expected {what}")
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS),
                  key=_natural_key)


# ----------------------------------------------------------------------------------- readers

def _read_shanghaitech(root: Path, split: str | None) -> list[Sample]:
    if split:
        root = root / split
    images = _require_dir(root / "images", "an 'images/' folder (ShanghaiTech: IMG_n.jpg)")
    gt_dir = _require_dir(root / "ground-truth",
                          "a 'ground-truth/' folder (ShanghaiTech: GT_IMG_n.mat)")
    samples = []
    for img in _images_in(images):
        mat_path = gt_dir / f"GT_{img.stem}.mat"
        if not mat_path.is_file():
            raise DatasetError(f"{mat_path}: expected the annotation of {img.name}")
        mat = _load_mat(mat_path)
        if "image_info" not in mat:
            raise DatasetError(f"{mat_path}: expected an 'image_info' struct with 'location'")
        pts = _find_points_in_mat(mat["image_info"])
        if pts is None:
            raise DatasetError(f"{mat_path}: 'image_info' holds no (n, 2) 'location' array")
        samples.append(Sample(img.stem, img, _points_array(pts, str(mat_path))))
    return samples


def _read_qnrf(root: Path, split: str | None) -> list[Sample]:
    if split:
        root = root / split
    samples = []
    for img in _images_in(root):
        ann = root / f"{img.stem}_ann.mat"
        if not ann.is_file():
            raise DatasetError(f"{ann}: expected the UCF-QNRF annotation of {img.name}")
        mat = _load_mat(ann)
        if "annPoints" not in mat:
            raise DatasetError(f"{ann}: expected an 'annPoints' (n, 2) array")
        samples.append(Sample(img.stem, img, _points_array(mat["annPoints"], str(ann))))
    return samples


def _read_nwpu(root: Path, split: str | None) -> list[Sample]:
    images = _require_dir(root / "images", "an 'images/' folder (NWPU-Crowd: 0001.jpg)")
    jsons, mats = root / "jsons", root / "mats"
    if not jsons.is_dir() and not mats.is_dir():
        raise DatasetError(f"{root}: expected 'jsons/' (0001.json) or 'mats/' (0001.mat) "
                           "annotation folder (NWPU-Crowd)")
    ids: list[str] | None = None
    if split:
        listing = root / f"{split}.txt"
        if not listing.is_file():
            raise DatasetError(f"{listing}: expected the NWPU-Crowd id list of split {split!r}")
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    paths = ([images / f"{i}.jpg" for i in ids] if ids is not None else _images_in(images))
    samples = []
    for img in paths:
        if not img.is_file():
            raise DatasetError(f"{img}: listed in the split but missing")
        js, mt = jsons / f"{img.stem}.json", mats / f"{img.stem}.mat"
        if js.is_file():
            try:
                data = json.loads(js.read_text())
            except json.JSONDecodeError as e:
                raise DatasetError(f"{js}: not valid JSON ({e})") from e
            if "points" not in data:
                raise DatasetError(f"{js}: expected a 'points' list of [x, y]")
            pts = _points_array(data["points"], str(js))
        elif mt.is_file():
            mat = _load_mat(mt)
            if "annPoints" not in mat:
                raise DatasetError(f"{mt}: expected an 'annPoints' (n, 2) array")
            pts = _points_array(mat["annPoints"], str(mt))
        elif ids is None:
            continue  # the test split ships images without annotations
        else:
            raise DatasetError(f"{js}: expected the annotation of {img.name} (or {mt})")
        samples.append(Sample(img.stem, img, pts))
    return samples


def _read_jhu(root: Path, split: str | None) -> list[Sample]:
    if split:
        root = root / split
    images = _require_dir(root / "images", "an 'images/' folder (JHU-Crowd++: <split>/images)")
    gt_dir = _require_dir(root / "gt", "a 'gt/' folder (JHU-Crowd++: <split>/gt/0001.txt)")
    samples = []
    for img in _images_in(images):
        txt = gt_dir / f"{img.stem}.txt"
        if not txt.is_file():
            raise DatasetError(f"{txt}: expected the annotation of {img.name}")
        rows = []
        for n, line in enumerate(txt.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError) as e:
                raise DatasetError(f"{txt}:{n}: expected 'x y w h o b', got {line!r}") from e
        samples.append(Sample(img.stem, img, _points_array(rows, str(txt))))
    return samples


def _read_json(root: Path, split: str | None, video: Path | None = None,
               labels: Path | None = None) -> list[Sample]:
    if split:
        root = root / split
    if labels is not None:
        ann: Path | None = labels if labels.is_absolute() else root / labels
        if not ann.is_file():
            raise DatasetError(f"{ann}: labels file not found")
    else:
        candidates = [root / "points.json", root / "train_points.json"]
        ann = next((p for p in candidates if p.is_file()), None)
    if ann is None:
        raise DatasetError(f"{root}: expected points.json ({{'images': [...]}}) or "
                           "train_points.json ({'frames': [...]})")
    try:
        data = json.loads(ann.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{ann}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not ({"images", "frames"} & data.keys()):
        raise DatasetError(f"{ann}: expected a mapping with an 'images' or 'frames' list")
    key = "frames" if "frames" in data else "images"
    entries = data[key]
    if not isinstance(entries, list):
        raise DatasetError(f"{ann}: '{key}' must be a list")
    default_video = video or (Path(data["video"]) if data.get("video") else None)
    dirs = [root, root / "images", root / "frames_train", root / "frames"]
    samples = []
    for i, e in enumerate(entries):
        where = f"{ann}: {key}[{i}]"
        if not isinstance(e, dict) or "points" not in e:
            raise DatasetError(f"{where}: expected a mapping with 'points'")
        vid = Path(e["video"]) if e.get("video") and video is None else default_video
        pts = _points_array(e["points"], where)
        if "count" in e and int(e["count"]) != len(pts):
            raise DatasetError(f"{where}: 'count' is {e['count']} but {len(pts)} points listed")
        fi = e.get("frame_index")
        if vid is not None:
            if fi is None:
                raise DatasetError(f"{where}: a video frame needs its 0-based 'frame_index'")
            path = root / vid
            if not path.is_file():
                raise DatasetError(f"{where}: video {path} not found")
            name = e.get("image") and Path(e["image"]).stem or f"{path.stem}#{int(fi)}"
            samples.append(Sample(name, path, pts, frame_index=int(fi), video=path))
            continue
        if "image" not in e:
            raise DatasetError(f"{where}: expected 'image' (or a 'video' with 'frame_index')")
        img = next((d / e["image"] for d in dirs if (d / e["image"]).is_file()), None)
        if img is None:
            raise DatasetError(f"{where}: image {e['image']!r} not found in "
                               f"{', '.join(str(d) for d in dirs)}")
        samples.append(Sample(Path(e["image"]).stem, img, pts,
                              frame_index=int(fi) if fi is not None else None))
    if key == "frames":
        samples.sort(key=lambda s: (str(s.video or ""), s.frame_index or 0))
    return samples
