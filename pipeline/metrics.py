"""Run metrics: Prometheus exposition, a compact console status line, a progress bar for files.

The supervisor polls the shared-memory counters of every ring and the batch pool (cheap reads, no
messages from the stages) and feeds them to ``PipelineMetrics.update``. Per camera: fps in
(frames into the ring) and out (results), drops (``latest`` policy), lost frames (crash recovery),
queue depth, capture->result latency p50/p99, state; per stage: fps, restarts, up.

Example::

    m = PipelineMetrics(["lobby"], port=9108)
    m.update(snapshot)                 # a ``Snapshot`` the supervisor builds every poll
    print(m.status_line())
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pipeline.events import CAMERA_STATES

STAGES = ("ingest", "tile", "inference", "post")


@dataclass
class CameraSnapshot:
    ring: dict[str, int]  # FrameRing.stats()
    latencies: np.ndarray  # recent capture->result latencies, seconds
    state: str = "starting"
    reason: str = ""
    total_frames: int | None = None  # files: decoded frames expected (progress bar)


@dataclass
class Snapshot:
    ts: float
    cameras: dict[str, CameraSnapshot]
    pool: dict[str, int] = field(default_factory=dict)  # BatchPool.stats()
    restarts: dict[str, int] = field(default_factory=dict)  # stage -> crash count
    up: dict[str, bool] = field(default_factory=dict)


class _Rate:
    """fps from counter deltas, lightly smoothed so the status line does not flicker."""

    def __init__(self) -> None:
        self.last: tuple[float, int] | None = None
        self.value = 0.0

    def update(self, ts: float, total: int) -> float:
        if self.last is not None and ts > self.last[0]:
            inst = (total - self.last[1]) / (ts - self.last[0])
            self.value = inst if self.value == 0.0 else 0.5 * inst + 0.5 * self.value
        self.last = (ts, total)
        return self.value


class PipelineMetrics:
    """Prometheus collectors (own registry) + console rendering for one run."""

    def __init__(self, cameras: list[str], port: int | None = None, host: str = "127.0.0.1") -> None:
        self.cameras = cameras
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_in = Counter("crowdstream_frames_in", "Frames written into the camera's ring",
                                 ["camera"], registry=r)
        self.frames_out = Counter("crowdstream_frames_out", "Frames counted (results emitted)",
                                  ["camera"], registry=r)
        self.drops = Counter("crowdstream_frames_dropped", "Frames dropped by the latest policy",
                             ["camera"], registry=r)
        self.lost = Counter("crowdstream_frames_lost", "Frames lost to a stage crash",
                            ["camera"], registry=r)
        self.fps = Gauge("crowdstream_fps", "Frames per second into / out of the pipeline",
                         ["camera", "direction"], registry=r)
        self.depth = Gauge("crowdstream_queue_depth", "Items waiting on a pipeline edge",
                           ["edge"], registry=r)
        self.latency = Gauge("crowdstream_latency_seconds", "Capture to result latency",
                             ["camera", "quantile"], registry=r)
        self.state = Gauge("crowdstream_camera_state", "1 for the camera's current state",
                           ["camera", "state"], registry=r)
        self.stage_fps = Gauge("crowdstream_stage_fps", "Items per second through a stage "
                               "(tile/post: frames, inference: tiles)", ["stage"], registry=r)
        self.restarts = Gauge("crowdstream_stage_restarts", "Crashes restarted by the supervisor",
                              ["stage"], registry=r)
        self.up = Gauge("crowdstream_stage_up", "1 while the stage's process runs", ["stage"],
                        registry=r)
        self._prev: dict[tuple[str, str], int] = {}
        self._rates: dict[str, _Rate] = {}
        self.last: Snapshot | None = None
        self.server: Any = None
        if port is not None:
            self.server, _ = start_http_server(port, addr=host, registry=r)

    def _rate(self, key: str, ts: float, total: int) -> float:
        return self._rates.setdefault(key, _Rate()).update(ts, total)

    def _inc(self, counter: Counter, cam: str, key: str, total: int) -> None:
        prev = self._prev.get((cam, key), 0)
        if total > prev:
            counter.labels(cam).inc(total - prev)
        self._prev[(cam, key)] = total

    def update(self, snap: Snapshot) -> None:
        ts = snap.ts
        tiled = emitted = 0
        for cam, c in snap.cameras.items():
            r = c.ring
            self._inc(self.frames_in, cam, "in", r["puts"])
            self._inc(self.frames_out, cam, "out", r["emitted"])
            self._inc(self.drops, cam, "drops", r["drops"])
            self._inc(self.lost, cam, "lost", r["lost"])
            self.fps.labels(cam, "in").set(self._rate(f"in:{cam}", ts, r["puts"]))
            self.fps.labels(cam, "out").set(self._rate(f"out:{cam}", ts, r["emitted"]))
            self.depth.labels(f"frames:{cam}").set(r["depth"])
            if len(c.latencies):
                p50, p99 = np.percentile(c.latencies, [50, 99])
                self.latency.labels(cam, "0.5").set(p50)
                self.latency.labels(cam, "0.99").set(p99)
            for s in CAMERA_STATES:
                self.state.labels(cam, s).set(1.0 if s == c.state else 0.0)
            tiled += r["tiled"]
            emitted += r["emitted"]
        self.stage_fps.labels("tile").set(self._rate("tile", ts, tiled))
        self.stage_fps.labels("post").set(self._rate("post", ts, emitted))
        if snap.pool:
            self.stage_fps.labels("inference").set(self._rate("inference", ts, snap.pool["tiles"]))
            self.depth.labels("infer").set(snap.pool["queued_infer"])
            self.depth.labels("post").set(snap.pool["queued_post"])
        for stage in STAGES:
            self.restarts.labels(stage).set(snap.restarts.get(stage, 0))
            self.up.labels(stage).set(1.0 if snap.up.get(stage, False) else 0.0)
        self.last = snap

    # --- console ---
    def status_line(self) -> str:
        """``lobby online in 25.0 out 24.9 fps q1 drop 0 lat 85/140ms | infer 120 tiles/s``."""
        snap = self.last
        if snap is None:
            return "starting"
        parts = []
        for cam, c in snap.cameras.items():
            r = c.ring
            lat = ""
            if len(c.latencies):
                p50, p99 = np.percentile(c.latencies, [50, 99]) * 1000.0
                lat = f" lat {p50:.0f}/{p99:.0f}ms"
            fin = self._rates.get(f"in:{cam}", _Rate()).value
            fout = self._rates.get(f"out:{cam}", _Rate()).value
            extra = f" lost {r['lost']}" if r["lost"] else ""
            parts.append(f"{cam} {c.state} in {fin:.1f} out {fout:.1f} fps q{r['depth']} "
                         f"drop {r['drops']}{extra}{lat}")
        line = " | ".join(parts)
        inf = self._rates.get("inference")
        if inf is not None:
            line += f" | infer {inf.value:.1f} tiles/s"
        crashes = sum(snap.restarts.values())
        if crashes:
            line += f" | restarts {crashes}"
        return line

    def progress_line(self, width: int = 24) -> str | None:
        """A progress bar over the file cameras (None when no camera has a known length)."""
        snap = self.last
        if snap is None:
            return None
        done = total = 0
        for c in snap.cameras.values():
            if c.total_frames:
                total += c.total_frames
                done += min(c.total_frames, c.ring["last_index"] + 1)
        if total == 0:
            return None
        frac = done / total
        fill = int(frac * width)
        fps = self._rates.get("post", _Rate()).value
        # the bar counts decoded frames (sampling may count only some); ETA from the same scale
        rate = sum(self._rates.get(f"idx:{cam}", _Rate()).value for cam in snap.cameras)
        eta = (total - done) / rate if rate > 0 else float("nan")
        eta_s = time.strftime("%M:%S", time.gmtime(eta)) if eta == eta and eta < 360000 else "--:--"
        return (f"[{'#' * fill}{'-' * (width - fill)}] {frac * 100:5.1f}% {done}/{total} "
                f"{fps:.1f} fps ETA {eta_s}")

    def track_progress(self, snap: Snapshot) -> None:
        for cam, c in snap.cameras.items():
            self._rate(f"idx:{cam}", snap.ts, max(0, c.ring["last_index"] + 1))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
