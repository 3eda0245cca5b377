"""Run metrics: one ``Snapshot`` of the shared-memory counters, and its Prometheus exposition.

Every poll the supervisor takes a ``Snapshot`` (``Snapshot.take``: cheap reads of every ring's
transport counters and stage bookkeeping and of the batch pool, no messages from the stages) and
feeds it to ``PipelineMetrics.update`` and to the console (``pipeline.console``). Per camera: fps
in (frames into the ring) and out (results), drops (``latest`` policy), lost frames (crash
recovery), queue depth, capture->result latency p50/p99, state; per stage: fps, restarts, up.

Example::

    m = PipelineMetrics(["lobby"], port=9108)
    snap = Snapshot.take({"lobby": ring}, {"lobby": ("online", "")}, {}, pool, up, restarts)
    m.update(snap)
    m.rate("out:lobby")                # results per second
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from engines.progress import Rate
from pipeline.events import CAMERA_STATES
from pipeline.shm import BatchPool, FrameRing

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

    @classmethod
    def take(cls, rings: Mapping[str, FrameRing], states: Mapping[str, tuple[str, str]],
             totals: Mapping[str, int | None], pool: BatchPool | None,
             up: Mapping[str, bool], restarts: Mapping[str, int]) -> Snapshot:
        """Read every camera's ring (``states``: camera -> (state, reason); ``totals``: camera ->
        frames expected, for files) and the batch pool, now."""
        cams = {name: CameraSnapshot(r.stats(), r.counters.latency_samples(),
                                     *states.get(name, ("starting", "")), totals.get(name))
                for name, r in rings.items()}
        return cls(time.time(), cams, pool.stats() if pool is not None else {}, dict(restarts),
                   dict(up))

    def drained(self) -> bool:
        """Every frame written so far has been counted (or counted as lost/dropped)."""
        for c in self.cameras.values():
            r = c.ring
            if r["depth"] or r["emitted"] + r["lost"] < r["tiled"]:
                return False
        return not (self.pool and (self.pool["queued_infer"] or self.pool["queued_post"]))

    def all_ended(self) -> bool:
        """Every source ended and the tile stage saw each end."""
        return all(c.ring["ended"] and c.ring["eos_seen"] for c in self.cameras.values())


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
        self._rates: dict[str, Rate] = {}
        self.last: Snapshot | None = None
        self.server: Any = None
        if port is not None:
            self.server, _ = start_http_server(port, addr=host, registry=r)

    def _rate(self, key: str, ts: float, total: int) -> float:
        return self._rates.setdefault(key, Rate(weight=0.5)).update(ts, total)

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

    def rate(self, key: str) -> float:
        """The smoothed per-second rate behind a gauge: ``in:<camera>``, ``out:<camera>``,
        ``tile``, ``post``, ``inference`` (0.0 before two snapshots)."""
        r = self._rates.get(key)
        return r.value if r is not None else 0.0

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
