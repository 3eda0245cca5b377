"""What the post stage hands to every sink, and the interface sinks implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class FrameResult:
    """The count of one frame of one camera.

    ``density`` is the smoothed per-cell count map (``raw_density`` the unsmoothed one) whose
    cells are ``cell_pixels`` frame pixels on a side. ``zone_counts`` / ``zone_density_m2`` are
    filled by the zone stage when the camera has zones (and a ground calibration).

    Example::

        def write(self, r: FrameResult) -> None:
            print(r.camera, r.frame_index, round(r.count, 1))
    """

    camera: str
    frame_index: int  # monotonic per camera, from 0, counts every decoded frame
    pts: float | None  # source presentation time in seconds
    capture_ts: float  # wall clock (time.time()) when the frame was decoded
    count: float  # smoothed
    raw_count: float
    density: np.ndarray  # float32 (h, w), smoothed
    raw_density: np.ndarray  # float32 (h, w)
    cell_pixels: float
    frame_size: tuple[int, int]  # (height, width)
    engine_id: str
    result_ts: float = 0.0  # wall clock when the count was ready
    zone_counts: dict[str, float] = field(default_factory=dict)
    zone_density_m2: dict[str, float] = field(default_factory=dict)
    density_m2: float | None = None  # whole calibrated ground area, people / m^2
    frame: np.ndarray | None = None  # BGR frame, only for sinks that asked for it (recording)

    @property
    def latency_s(self) -> float:
        return self.result_ts - self.capture_ts


class Sink(Protocol):
    """Consumes results in the post process. ``write`` must not block on slow I/O for long."""

    wants_frames: bool

    def open(self) -> None: ...

    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...
