"""What the Redis sink publishes for the operator console besides counts: JPEG snapshots of counted
frames (downscaled, at ``redis.snapshot_every_s``; one full-resolution frame when a client asks)
and per-window rollups of the counts (for charts over hours; the counts stream holds minutes).

The post stage hands the sink a view of the frame; ``take_snapshot`` copies it only when a
snapshot is due (downscaled first, so the copy is small). JPEG encoding runs on the publisher's
thread (OpenCV releases the GIL), never in the counting path.

Example::

    snap = take_snapshot(result.frame, max_width=640, full=False)   # in RedisSink.write
    data = encode_jpeg(snap.small, quality=75)                       # on the publisher thread
    win = RollupWindow(10.0)
    done = win.add(envelope)        # a finished window's summary (rollup.v1 fields) or None
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FULL_FRAME_QUALITY = 95  # the full frame is for labeling: keep the detail
FULL_FRAME_TTL_S = 120


@dataclass
class SnapshotFrames:
    """A snapshot's pixels, owned (copied out of the ring): ``small`` at most ``max_width``
    wide; ``full`` the frame at its decoded resolution when one was requested, else None."""

    small: np.ndarray
    frame_size: tuple[int, int]  # (height, width) as decoded
    full: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(self.small.nbytes + (self.full.nbytes if self.full is not None else 0))


def take_snapshot(frame: np.ndarray, max_width: int, full: bool = False) -> SnapshotFrames:
    """Copy ``frame`` (BGR, a view valid only now) for a snapshot: downscaled to ``max_width``
    (area interpolation, aspect kept), plus a full copy when ``full``."""
    import cv2

    h, w = frame.shape[:2]
    bgr = frame[..., :3]
    if w > max_width:
        nh = max(1, round(h * max_width / w))
        small = cv2.resize(bgr, (max_width, nh), interpolation=cv2.INTER_AREA)
    else:
        small = np.ascontiguousarray(bgr).copy()
    return SnapshotFrames(small, (h, w), np.ascontiguousarray(bgr).copy() if full else None)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR image."""
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding of a snapshot failed")
    return buf.tobytes()


@dataclass
class _Acc:
    n: int = 0
    total: float = 0.0
    peak: float = 0.0
    low: float = math.inf
    m2_total: float = 0.0
    m2_n: int = 0

    def add(self, value: float, m2: float | None) -> None:
        self.n += 1
        self.total += value
        self.peak = max(self.peak, value)
        self.low = min(self.low, value)
        if m2 is not None:
            self.m2_total += m2
            self.m2_n += 1

    @property
    def m2_mean(self) -> float | None:
        return self.m2_total / self.m2_n if self.m2_n else None


@dataclass
class RollupWindow:
    """Accumulates one camera's count envelopes into windows of ``every_s`` seconds of capture
    time; ``add`` returns the previous window's summary when a frame opens a new one."""

    every_s: float
    index: int | None = None
    camera: _Acc = field(default_factory=_Acc)
    zones: dict[str, _Acc] = field(default_factory=dict)

    def add(self, env: dict[str, Any]) -> dict[str, Any] | None:
        idx = int(env["capture_ts"] // self.every_s)
        done = None
        if self.index is not None and idx != self.index:
            done = self.summary()
        if self.index != idx:
            self.index, self.camera, self.zones = idx, _Acc(), {}
        self.camera.add(float(env["count"]), env.get("density_m2"))
        for name, z in (env.get("zones") or {}).items():
            self.zones.setdefault(name, _Acc()).add(float(z["count"]), z.get("density_m2"))
        return done

    def summary(self) -> dict[str, Any] | None:
        """The current window's fields for ``pipeline.envelopes.rollup_envelope``."""
        if self.index is None or self.camera.n == 0:
            return None
        c = self.camera
        return {"start_ts": self.index * self.every_s, "end_ts": (self.index + 1) * self.every_s,
                "frames": c.n, "count_mean": c.total / c.n, "count_max": c.peak,
                "count_min": c.low, "density_m2_mean": c.m2_mean,
                "zones": {n: {"count_mean": a.total / a.n, "count_max": a.peak,
                              "density_m2_mean": a.m2_mean} for n, a in self.zones.items()}}


__all__ = ["FULL_FRAME_QUALITY", "FULL_FRAME_TTL_S", "RollupWindow", "SnapshotFrames",
           "encode_jpeg", "take_snapshot"]
