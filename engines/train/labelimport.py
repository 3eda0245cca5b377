"""Import head points from the exports of labeling tools into a camera's labels file.

Three exports are read, the format found from the file itself (``detect_format``):

- **Label Studio** JSON export (a list of tasks): ``KeyPointLabels`` results give head points
  (``value.x`` / ``value.y`` in percent of ``original_width`` / ``original_height``); a
  ``Number`` result alone gives a count. The latest annotation of a task that was not cancelled
  is used; tasks without one are not labeled. Uploaded files carry Label Studio's 8-hex prefix
  (``/data/upload/3/1a2b3c4d-snap.jpg``), which is removed to find the image.
- **CVAT for images 1.1** XML (``annotations.xml``): every ``<points>`` shape of an ``<image>``
  gives its points (``points="x1,y1;x2,y2"``, pixels of ``width`` x ``height``).
- **COCO keypoints** JSON: one point per annotation: the keypoint named ``head`` (or the only
  keypoint of its category), else the mean of the visible face keypoints of a COCO person (nose,
  eyes, ears), else of all its visible keypoints; an annotation with no visible keypoint but a
  box is placed at the top centre of its box (a tenth of its height down).

An image listed with no points is an empty frame (count 0). ``label`` keeps only shapes with
that label. Points are scaled when the export's image size differs from the saved image's, and
clipped into it. Images are found beside the labels file, in ``images_dir``, or beside the
export (and in its ``images/`` folder, CVAT's zip layout); those found elsewhere are copied
beside the labels file (re-encoded as JPEG when they are not JPEG).

Example::

    report = import_export("export.json", labels_path("runs/site", "lobby"), "lobby")
    print(report.summary())
"""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.train.sitelabels import LabelEntry, LabelsError, read_labels, write_labels

FORMATS = ("labelstudio", "cvat", "coco")
_LS_UPLOAD = re.compile(r"^[0-9a-f]{8}-(.+)$")
_COCO_FACE = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")


@dataclass
class ExportedImage:
    """One image of an export: its name there, head points (or a count) and the size the tool
    saw (``None`` when the export does not say)."""

    name: str
    points: np.ndarray | None  # (n, 2) pixels of ``size``; None when only a count is known
    count: float | None = None
    size: tuple[int, int] | None = None  # (width, height)
    candidates: tuple[str, ...] = ()  # file names to look for, best first


@dataclass
class ImportReport:
    """What an import did."""

    format: str
    labels: Path
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    scaled: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # reasons, one per item left out

    def summary(self) -> str:
        n = len(self.added) + len(self.replaced)
        parts = [f"imported {n} image(s) from a {self.format} export into {self.labels}"]
        if self.replaced:
            parts.append(f"{len(self.replaced)} replaced earlier labels")
        if self.empty:
            parts.append(f"{len(self.empty)} with no points (empty frames: count 0)")
        if self.scaled:
            parts.append(f"{len(self.scaled)} scaled to the saved image's size")
        if self.copied:
            parts.append(f"{len(self.copied)} image(s) copied beside the labels file")
        if self.skipped:
            parts.append(f"{len(self.skipped)} left out ({'; '.join(self.skipped[:3])}"
                         + (" ..." if len(self.skipped) > 3 else "") + ")")
        return "; ".join(parts)


def detect_format(path: str | os.PathLike[str]) -> str:
    """``labelstudio``, ``cvat`` or ``coco``, from the file's content; LabelsError otherwise."""
    path = Path(path)
    head = _read(path).lstrip()[:1]
    if head == "<":
        return "cvat"
    data = _json(path)
    if isinstance(data, list) and (not data or isinstance(data[0], dict) and "data" in data[0]):
        return "labelstudio"
    if isinstance(data, dict) and {"images", "annotations", "categories"} <= data.keys():
        return "coco"
    raise LabelsError(f"{path}: not a Label Studio JSON export (a list of tasks), a CVAT for "
                      "images XML or a COCO keypoints JSON (images, annotations, categories)")


def read_export(path: str | os.PathLike[str], fmt: str | None = None,
                label: str | None = None) -> tuple[str, list[ExportedImage], list[str]]:
    """(format, images, reasons for what was left out) of an export file."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    readers = {"labelstudio": _read_labelstudio, "cvat": _read_cvat, "coco": _read_coco}
    if fmt not in readers:
        raise LabelsError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    images, skipped = readers[fmt](path, label)
    return fmt, images, skipped


def import_export(export: str | os.PathLike[str], labels_file: str | os.PathLike[str],
                  camera: str, *, images_dir: str | os.PathLike[str] | None = None,
                  fmt: str | None = None, label: str | None = None) -> ImportReport:
    """Add (or replace) the labels of every image of ``export`` in the camera's labels file."""
    export = Path(export)
    labels = read_labels(labels_file, camera, missing_ok=True)
    fmt, images, skipped = read_export(export, fmt, label)
    report = ImportReport(fmt, labels.path, skipped=list(skipped))
    dirs = [labels.folder] + ([Path(images_dir)] if images_dir else []) + [
        export.parent, export.parent / "images"]
    for item in images:
        found = _find_image(item, dirs)
        if found is None:
            raise LabelsError(f"{export}: image {item.name!r} not found beside {labels.path} "
                              f"or in {', '.join(str(d) for d in dirs[1:])} (save it with "
                              "'crowdstream snapshot', or give --images DIR)")
        name = _bring(found, labels.folder, report)
        entry = _entry_for(item, labels.folder / name, name, report)
        old = labels.get(name)
        (report.replaced if old is not None and old.kind != "unlabeled" else
         report.added).append(name)
        if old is not None:
            entry = LabelEntry(entry.image, entry.points, entry.count, entry.zone_counts,
                               old.extra)
        labels = labels.upsert(entry)
    write_labels(labels)
    return report


# -- placing images ---------------------------------------------------------------------------


def _find_image(item: ExportedImage, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        for name in item.candidates or (Path(item.name).name,):
            p = d / name
            if p.is_file():
                return p
    return None


def _bring(found: Path, folder: Path, report: ImportReport) -> str:
    """The image's name beside the labels file, copying (as JPEG) when it is elsewhere."""
    if found.parent.resolve() == folder.resolve():
        return found.name
    folder.mkdir(parents=True, exist_ok=True)
    if found.suffix.lower() in (".jpg", ".jpeg"):
        dst = folder / found.name
        shutil.copyfile(found, dst)
    else:
        import cv2

        img = cv2.imread(str(found), cv2.IMREAD_COLOR)
        if img is None:
            raise LabelsError(f"{found}: not a readable image")
        dst = folder / (found.stem + ".jpg")
        cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    report.copied.append(dst.name)
    return dst.name


def _image_size(path: Path) -> tuple[int, int]:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise LabelsError(f"{path}: not a readable image")
    return int(img.shape[1]), int(img.shape[0])


def _entry_for(item: ExportedImage, path: Path, name: str, report: ImportReport) -> LabelEntry:
    if item.points is None:
        return LabelEntry(name, count=item.count)
    w, h = _image_size(path)
    pts = item.points.astype(np.float64)
    if item.size is not None and item.size != (w, h) and len(pts):
        pts = pts * [w / item.size[0], h / item.size[1]]
        report.scaled.append(name)
    if len(pts):  # tools allow a click on the border; keep it inside the image
        pts = np.clip(pts, 0.0, [w - 1e-3, h - 1e-3])
    else:
        report.empty.append(name)
    return LabelEntry(name, points=pts.astype(np.float32))


# -- readers ----------------------------------------------------------------------------------


def _read(path: Path) -> str:
    if not path.is_file():
        raise LabelsError(f"{path}: export file not found")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not a text file (expected a JSON or XML export)") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise LabelsError(f"{path}: not valid JSON ({e})") from None


def _read_labelstudio(path: Path, label: str | None
                      ) -> tuple[list[ExportedImage], list[str]]:
    tasks = _json(path)
    if not isinstance(tasks, list):
        raise LabelsError(f"{path}: a Label Studio JSON export is a list of tasks")
    out, skipped = [], []
    for i, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', i) if isinstance(task, dict) else i}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelsError(f"{where}: expected a task with 'data'")
        url = next((v for v in task["data"].values() if isinstance(v, str)), None)
        if url is None:
            raise LabelsError(f"{where}: 'data' names no image")
        anns = [a for a in (task.get("annotations") or task.get("completions") or [])
                if isinstance(a, dict) and not a.get("was_cancelled")]
        base = url.split("?")[0].rstrip("/").split("/")[-1]
        m = _LS_UPLOAD.match(base)
        cands = (m.group(1), base) if m else (base,)
        if not anns:
            skipped.append(f"{cands[0]}: not annotated")
            continue
        ann = anns[-1]
        points, count, size = [], None, None
        for r in ann.get("result") or []:
            value = r.get("value") or {}
            kind = r.get("type")
            if kind in ("keypointlabels", "keypoint"):
                names = value.get("keypointlabels") or []
                if label is not None and label not in names:
                    continue
                ow, oh = r.get("original_width"), r.get("original_height")
                if ow and oh:
                    size = (int(ow), int(oh))
                points.append((float(value["x"]), float(value["y"])))
            elif kind == "number" and "number" in value:
                count = float(value["number"])
        if count is not None and not points:
            out.append(ExportedImage(base, None, count, None, cands))
            continue
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        if size is not None:
            pts = pts / 100.0 * [size[0], size[1]]
        else:  # percentages of an unknown size: scaled to the saved image when placed
            size = (100, 100)
        out.append(ExportedImage(base, pts, None, size, cands))
    return out, skipped


def _read_cvat(path: Path, label: str | None) -> tuple[list[ExportedImage], list[str]]:
    try:
        root = ET.fromstring(_read(path))
    except ET.ParseError as e:
        raise LabelsError(f"{path}: not valid XML ({e})") from None
    if root.tag != "annotations":
        raise LabelsError(f"{path}: expected CVAT's <annotations> root, got <{root.tag}>")
    images = root.findall("image")
    if not images and root.findall("track"):
        raise LabelsError(f"{path}: a 'CVAT for video' export (tracks); export the task as "
                          "'CVAT for images 1.1'")
    out, skipped = [], []
    for img in images:
        name = img.get("name") or ""
        where = f"{path}: image {img.get('id', '?')} ({name})"
        try:
            size = (int(img.get("width", "")), int(img.get("height", "")))
        except ValueError:
            raise LabelsError(f"{where}: expected width and height attributes") from None
        pts: list[tuple[float, float]] = []
        for shape in img.findall("points"):
            if label is not None and shape.get("label") != label:
                continue
            for pair in (shape.get("points") or "").split(";"):
                if not pair.strip():
                    continue
                try:
                    x, y = (float(v) for v in pair.split(","))
                except ValueError:
                    raise LabelsError(f"{where}: points {pair!r} is not 'x,y'") from None
                pts.append((x, y))
        others = {c.tag for c in img} - {"points", "tag"}
        if others and not pts:
            skipped.append(f"{name}: only {', '.join(sorted(others))} shapes (head points are "
                           "<points>)")
            continue
        base = Path(name).name
        out.append(ExportedImage(name, np.asarray(pts, np.float64).reshape(-1, 2), None, size,
                                 (base,)))
    return out, skipped


def _read_coco(path: Path, label: str | None) -> tuple[list[ExportedImage], list[str]]:
    data = _json(path)
    cats = {c.get("id"): c for c in data.get("categories") or [] if isinstance(c, dict)}
    if label is not None:
        cats = {k: c for k, c in cats.items() if c.get("name") == label}
    per_image: dict[Any, list[tuple[float, float]]] = {}
    skipped: list[str] = []
    for a in data.get("annotations") or []:
        cat = cats.get(a.get("category_id"))
        if cat is None:
            continue
        pt = _coco_head(a, cat)
        if pt is None:
            skipped.append(f"annotation {a.get('id')}: no visible keypoint and no box")
            continue
        per_image.setdefault(a.get("image_id"), []).append(pt)
    out = []
    for img in data.get("images") or []:
        name = str(img.get("file_name") or "")
        if not name:
            raise LabelsError(f"{path}: image {img.get('id')} has no file_name")
        size = (int(img["width"]), int(img["height"])) if img.get("width") and \
            img.get("height") else None
        pts = np.asarray(per_image.get(img.get("id"), []), np.float64).reshape(-1, 2)
        out.append(ExportedImage(name, pts, None, size, (Path(name).name,)))
    return out, skipped


def _coco_head(ann: dict[str, Any], cat: dict[str, Any]) -> tuple[float, float] | None:
    names = list(cat.get("keypoints") or [])
    kp = np.asarray(ann.get("keypoints") or [], np.float64)
    if kp.size and kp.size % 3 == 0:
        kp = kp.reshape(-1, 3)
        visible = kp[:, 2] > 0
        if "head" in names and names.index("head") < len(kp) and visible[names.index("head")]:
            return float(kp[names.index("head"), 0]), float(kp[names.index("head"), 1])
        face = [i for i, n in enumerate(names) if n in _COCO_FACE and i < len(kp) and visible[i]]
        pick = face or [i for i in range(len(kp)) if visible[i]]
        if pick:
            return float(kp[pick, 0].mean()), float(kp[pick, 1].mean())
    box = ann.get("bbox")
    if box and len(box) == 4:
        x, y, w, h = (float(v) for v in box)
        return x + w / 2.0, y + h / 10.0
    return None


__all__ = ["FORMATS", "ExportedImage", "ImportReport", "detect_format", "import_export",
           "read_export"]
