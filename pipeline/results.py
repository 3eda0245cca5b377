"""What the post stage hands to every sink (``FrameResult``), and the interface sinks implement
(``Sink``).

A ``FrameResult`` is built on ``engines.density.DensityMap``, the one density-map type of the
project: the smoothed and the raw map are both ``DensityMap``s, so a cell's size in frame pixels
comes from the map itself (``result.cell_pixels`` is ``result.density.cell_pixels``).

Example::

    class PrintSink(Sink):
        def write(self, result: FrameResult) -> None:
            print(result.camera, result.frame_index, round(result.count, 1))

        def write_status(self, status: CameraStatus) -> None:
            print(status.camera, status.state)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engines.density import DensityMap
from pipeline.events import CameraStatus


@dataclass
class FrameResult:
    """The count of one frame of one camera.

    ``density`` is the smoothed per-cell count map and ``raw_density`` the unsmoothed one (ROI
    mask applied to both). ``count`` is the smoothed count; with the default smoothing (the count
    and the heatmap EMA share one weight) it equals ``density.count``. The zone sink fills
    ``zone_counts`` (people), ``zone_density`` (people per map cell) and, on calibrated cameras,
    ``zone_density_m2`` / ``density_m2`` before later sinks see the result.

    Example::

        r.count, r.density.map.shape, r.cell_pixels, r.zone_counts.get("door")
    """

    camera: str
    frame_index: int  # monotonic per camera, from 0, counts every decoded frame
    pts: float | None  # source presentation time in seconds
    capture_ts: float  # wall clock (time.time()) when the frame was decoded
    count: float  # smoothed
    raw_count: float
    density: DensityMap  # smoothed map
    raw_density: DensityMap
    frame_size: tuple[int, int]  # (height, width)
    engine_id: str
    result_ts: float = 0.0  # wall clock when the count was ready
    model: str = ""  # the label of the model that counted it (its card's name)
    tiles: int = 0  # tiles the frame was cut into
    reused_tiles: tuple[int, ...] | None = None  # reused by the motion gate (None: gate off)
    zone_counts: dict[str, float] = field(default_factory=dict)
    zone_density: dict[str, float] = field(default_factory=dict)  # people per map cell
    zone_density_m2: dict[str, float] = field(default_factory=dict)
    density_m2: float | None = None  # whole calibrated ground area, people / m^2
    frame: np.ndarray | None = None  # BGR frame, only for sinks that asked for it (recording)

    @property
    def cell_pixels(self) -> float:
        """Side of one density-map cell in frame pixels."""
        return self.density.cell_pixels

    @property
    def latency_s(self) -> float:
        return self.result_ts - self.capture_ts


class Sink(ABC):
    """Consumes results in the post process, in the order ``pipeline.sinks.build_sinks`` gives.

    The post stage calls ``open()`` once, then ``write()`` per frame and ``write_status()`` per
    camera state change, then ``close()`` once. ``write`` must not block on slow I/O for long
    (hand such work to a ``pipeline.worker.BackgroundWorker``). A sink that needs the BGR frame
    sets ``wants_frames = True`` (on the class, or on the instance before the post stage starts:
    the Redis sink wants frames only when snapshots are on); ``result.frame`` is then a view
    valid only during ``write``. Everything but ``write`` is a no-op by default.
    """

    wants_frames: bool = False

    def open(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Acquire resources (connections, threads, processes)."""

    @abstractmethod
    def write(self, result: FrameResult) -> None:
        """Consume one frame's result."""

    def write_status(self, status: CameraStatus) -> None:  # noqa: B027 - optional hook
        """A camera changed state (starting / online / reconnecting / offline / finished)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release; called once, also after a failed ``open`` of a later sink."""


class OutputTally(Protocol):
    """Where output sinks account for every message and frame they could lose, per camera (the
    post stage's is its cameras' shared-memory ``FrameCounters``, which the supervisor sums up
    in the run's summary line and exit status).

    Example::

        tally.queued("lobby")      # a message entered the Redis outage buffer (post thread)
        tally.delivered("lobby")   # the server confirmed it (publisher thread)
        tally.unrecorded("lobby")  # the recorder was behind: a frame not recorded
    """

    def queued(self, camera: str) -> None: ...

    def delivered(self, camera: str) -> None: ...

    def unrecorded(self, camera: str) -> None: ...
