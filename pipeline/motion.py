"""Motion-gated tiles: which tiles of a camera's frame changed since they were last counted.

The tile stage asks each gated camera's ``MotionGate`` which tiles of a frame (as counted: after
the resize rule) may keep their last density instead of going through the model. No model runs
here: the measure is a grey thumbnail of the frame, 1/8 of its size (``cv2.resize`` with
``INTER_AREA``, computed once per frame), compared per tile with the thumbnail of the frame the
tile was LAST COUNTED on (each tile keeps its own reference, so overlapping tiles are judged
right). A tile changed when the mean absolute grey difference over some 64x64-pixel patch of it
(8x8 thumbnail pixels, a box filter) exceeds ``threshold``: a mean over a whole 384-pixel tile
would dilute one person walking through it to about one grey level, the size of compression
noise; over a patch the same person is tens of grey levels.

A tile is recounted when it changed, when it was last counted ``max_age_s`` ago or more (the
source's time: PTS, else capture time), and every tile is recounted on the camera's first frame,
when the source session changes (a reconnect or a file's loop: ``FrameMeta.session``), when the
frame size or the layout changes, when the mean brightness jumps by more than ``threshold``
(lights switched) and when at least ``GLOBAL_SHARE`` of the tiles changed at once (the camera
moved). The post stage keeps each camera's last per-tile maps and stitches reused tiles from
them, so a reused tile's density is bit for bit the one last computed.

Example::

    gate = MotionGate(threshold=6.0, max_age_s=5.0)
    reuse = gate.decide(frame_bgr, layout, session=meta.session, t=meta.pts)
    reuse.sum(), gate.last_reason       # tiles that keep their last density, why all were run
"""

from __future__ import annotations

import math

import numpy as np

from engines.tiling import TileLayout
from pipeline.config import MotionGateConfig

THUMB = 8  # the thumbnail is 1/THUMB of the frame as counted
PATCH = 8  # thumbnail pixels: a change is judged over PATCH x PATCH (64 x 64 frame pixels)
GLOBAL_SHARE = 0.5  # this share of a frame's tiles changed at once: recount all of them


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A float32 grey thumbnail, 1/``THUMB`` of a BGR ``frame`` (area averaging, then grey: the
    cheap order, a 1080p frame takes about a millisecond)."""
    import cv2

    h, w = frame.shape[:2]
    small = cv2.resize(frame, (max(1, -(-w // THUMB)), max(1, -(-h // THUMB))),
                       interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)


def patch_change(now: np.ndarray, ref: np.ndarray) -> float:
    """The largest mean absolute difference between ``now`` and ``ref`` over any ``PATCH`` x
    ``PATCH`` patch (the whole region when it is smaller)."""
    import cv2

    diff = cv2.absdiff(now, ref)
    k = min(PATCH, diff.shape[0]), min(PATCH, diff.shape[1])
    if k == diff.shape:
        return float(diff.mean())
    return float(cv2.blur(diff, (k[1], k[0]), borderType=cv2.BORDER_REPLICATE).max())


class MotionGate:
    """One camera's gate (see the module docstring); lives in the tile stage."""

    def __init__(self, threshold: float, max_age_s: float) -> None:
        self.threshold = float(threshold)
        self.max_age_s = float(max_age_s)
        self.layout: TileLayout | None = None
        self.session: int | None = None
        self.regions: list[tuple[slice, slice]] = []
        self.refs: list[np.ndarray] = []  # each tile's thumbnail when it was last counted
        self.counted_t = np.zeros(0)  # source time each tile was last counted
        self.mean = math.nan  # the previous frame's mean grey level
        self.last_reason = ""  # why the last frame was recounted whole ("" when it was not)

    @classmethod
    def from_config(cls, cfg: MotionGateConfig) -> MotionGate:
        """From a camera's ``motion_gate:`` section."""
        return cls(cfg.threshold, cfg.max_age_s)

    def _regions(self, layout: TileLayout, shape: tuple[int, int]) -> list[tuple[slice, slice]]:
        th, tw = shape
        wh, ww = layout.window
        out = []
        for y, x in layout.positions:
            y0, x0 = min(y // THUMB, th - 1), min(x // THUMB, tw - 1)
            y1, x1 = min(-(-(y + wh) // THUMB), th), min(-(-(x + ww) // THUMB), tw)
            out.append((slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))))
        return out

    def _whole_frame_reason(self, layout: TileLayout, session: int, mean: float) -> str:
        if self.layout is None:
            return "first frame"
        if layout != self.layout:
            return "frame size changed"
        if session != self.session:
            return "new source session"
        if abs(mean - self.mean) > self.threshold:
            return "brightness jump"
        return ""

    def decide(self, frame: np.ndarray, layout: TileLayout, session: int = 0,
               t: float = 0.0) -> np.ndarray:
        """Which tiles of ``frame`` (BGR, as counted; ``layout`` its tiles) keep their last
        density: a bool per tile, True = reuse. The tiles it returns False for are taken as
        counted on this frame at time ``t`` (their reference becomes this frame)."""
        thumb = thumbnail(frame)
        mean = float(thumb.mean())
        self.last_reason = self._whole_frame_reason(layout, session, mean)
        self.mean, self.session = mean, session
        if self.last_reason == "first frame" or self.last_reason == "frame size changed":
            self.layout = layout
            self.regions = self._regions(layout, thumb.shape)
            self.refs = [np.empty(0, np.float32)] * layout.count
            self.counted_t = np.zeros(layout.count)
        if self.last_reason:
            recount = np.ones(layout.count, bool)
        else:
            moved = np.array([patch_change(thumb[r], ref) > self.threshold
                              for r, ref in zip(self.regions, self.refs, strict=True)])
            if moved.mean() >= GLOBAL_SHARE:
                self.last_reason = "scene changed"
                recount = np.ones(layout.count, bool)
            else:
                age = t - self.counted_t
                recount = moved | (age >= self.max_age_s) | (age < 0)
        for i in np.flatnonzero(recount):
            self.refs[i] = thumb[self.regions[i]].copy()
            self.counted_t[i] = t
        return ~recount


__all__ = ["GLOBAL_SHARE", "PATCH", "THUMB", "MotionGate", "patch_change", "thumbnail"]
