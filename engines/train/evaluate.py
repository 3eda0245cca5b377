"""Counting accuracy of a model or engine on annotated images: MAE, RMSE, per-image errors.

Each image goes through ``engines.predict.predict`` (the model's resize rules, windows cut and
stitched by ``engines.tiling.TileLayout``, the same path as the pipeline); the count is the
stitched map's sum. A torch model (anything with ``spec``/``block_size``) and an ``Engine`` from
``engines.backends.load_engine`` are both accepted.

Example::

    model, _ = load_checkpoint("configs/demo/mall_demo_model.pt")
    result = evaluate(model, samples, overlap=0.0)
    print(result.mae, result.rmse)
    result.write_csv("eval/errors.csv"); write_count_plot("eval/counts.png", result.records)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.train.datasets import Sample


@dataclass
class Record:
    """One image's result."""

    name: str
    frame_index: int | None
    true: float
    pred: float

    @property
    def error(self) -> float:
        return self.pred - self.true


@dataclass
class EvalResult:
    """Per-image records and the summary metrics over them."""

    records: list[Record]

    @property
    def mae(self) -> float:
        return float(np.mean([abs(r.error) for r in self.records])) if self.records else math.nan

    @property
    def rmse(self) -> float:
        if not self.records:
            return math.nan
        return float(math.sqrt(np.mean([r.error ** 2 for r in self.records])))

    def summary(self) -> dict[str, Any]:
        return {"images": len(self.records), "mae": self.mae, "rmse": self.rmse,
                "mean_true": float(np.mean([r.true for r in self.records])),
                "mean_pred": float(np.mean([r.pred for r in self.records]))}

    def write_csv(self, path: str | Path) -> Path:
        """``name,frame_index,true,pred,error`` one row per image."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "frame_index", "true", "pred", "error"])
            for r in self.records:
                fi = "" if r.frame_index is None else r.frame_index
                w.writerow([r.name, fi, f"{r.true:.3f}", f"{r.pred:.3f}", f"{r.error:.3f}"])
        return path


def evaluate(model_or_engine: Any, samples: Sequence[Sample], *, overlap: float = 0.0,
             images: Sequence[np.ndarray] | None = None,
             on_image: Callable[[int, Record], None] | None = None,
             tiling: str = "plain") -> EvalResult:
    """Count every sample with ``engines.predict.predict`` (the model's resize rules, then the
    whole image when it fits the window, else sliding windows with ``overlap``).

    ``images`` may give already-decoded images matching the samples' points; ``on_image`` is
    called after each image (progress); ``tiling="clip_count"`` uses CLIP-Count's official
    evaluation strip instead of the plain windows.
    """
    from engines.predict import predict

    records = []
    for i, s in enumerate(samples):
        img = images[i] if images is not None else s.load_rgb()
        dm = predict(model_or_engine, img, overlap=overlap, tiling=tiling)
        rec = Record(s.name, s.frame_index, float(s.count), dm.count)
        records.append(rec)
        if on_image is not None:
            on_image(i, rec)
    return EvalResult(records)


def write_count_plot(path: str | Path, records: Sequence[Record], title: str = "") -> Path:
    """PNG of true (green) and predicted (red) counts per image/frame, drawn with OpenCV."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h, ml, mr, mt, mb = 1000, 420, 60, 20, 40, 40
    img = np.full((h, w, 3), 255, np.uint8)
    true = np.array([r.true for r in records], dtype=np.float64)
    pred = np.array([r.pred for r in records], dtype=np.float64)
    xs_label = [r.frame_index if r.frame_index is not None else i for i, r in enumerate(records)]
    lo = float(min(true.min(), pred.min())) if len(records) else 0.0
    hi = float(max(true.max(), pred.max())) if len(records) else 1.0
    lo, hi = math.floor(lo) - 1, math.ceil(hi) + 1
    n = max(len(records) - 1, 1)

    def px(i: int, v: float) -> tuple[int, int]:
        x = ml + (w - ml - mr) * i / n
        y = h - mb - (h - mt - mb) * (v - lo) / (hi - lo)
        return int(round(x)), int(round(y))

    grey = (200, 200, 200)
    for k in range(6):  # horizontal grid with count labels
        v = lo + (hi - lo) * k / 5
        y = px(0, v)[1]
        cv2.line(img, (ml, y), (w - mr, y), grey, 1)
        cv2.putText(img, f"{v:.0f}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for k in range(0, len(records), max(1, len(records) // 8)):
        x = px(k, lo)[0]
        cv2.putText(img, str(xs_label[k]), (x - 10, h - mb + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1)
    for series, colour in ((true, (0, 160, 0)), (pred, (0, 0, 220))):
        if len(series) > 1:
            pts = np.array([px(i, v) for i, v in enumerate(series)], np.int32)
            cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        elif len(series) == 1:
            cv2.circle(img, px(0, series[0]), 3, colour, -1)
    mae = float(np.mean(np.abs(pred - true))) if len(records) else math.nan
    label = f"{title}  true (green) vs predicted (red)  MAE {mae:.2f}".strip()
    cv2.putText(img, label, (ml, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: cannot write the PNG")
    return path


def records_from_jsonl(path: str | Path, samples: Sequence[Sample], *, field: str = "raw_count",
                       frame_offset: int = 0, camera: str | None = None) -> list[Record]:
    """Match per-frame counts from ``crowdstream run``'s JSON lines to annotated frames.

    A line ``{"type": "count", "frame_index": i, "raw_count": c, ...}`` scores the sample whose
    ``frame_index`` is ``i + frame_offset``. Samples without a line are an error (the run missed
    frames), so a partial run is never reported as a full evaluation.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-frame counts not found: {path}")
    counts: dict[int, float] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from e
        if rec.get("type", "count") != "count" or (camera and rec.get("camera") != camera):
            continue
        if "frame_index" not in rec or field not in rec:
            raise ValueError(f"{path}:{n}: expected 'frame_index' and {field!r} in a count line")
        counts[int(rec["frame_index"]) + frame_offset] = float(rec[field])
    records, missing = [], []
    for s in samples:
        if s.frame_index is None:
            raise ValueError(f"sample {s.name} has no frame_index: video scoring needs frames")
        if s.frame_index not in counts:
            missing.append(s.frame_index)
            continue
        records.append(Record(s.name, s.frame_index, float(s.count), counts[s.frame_index]))
    if missing:
        raise ValueError(f"{path}: no count for {len(missing)} annotated frame(s), e.g. frame "
                         f"index {missing[0]} (frame_offset {frame_offset})")
    return records
