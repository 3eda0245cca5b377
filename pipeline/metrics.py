"""Run metrics: one ``Snapshot`` of the shared-memory counters, its Prometheus exposition and the
health endpoints, served from the supervisor process.

Every poll the supervisor takes a ``Snapshot`` (``Snapshot.take``: cheap reads of every ring's
transport counters and stage bookkeeping, the batch pool and the post stage's ``ValueBoard``; no
messages from the stages) and feeds it to ``PipelineMetrics.update`` and to the console
(``pipeline.console``). A scrape renders the latest snapshot whole (a custom collector, not one
``Counter`` per value updated one after another), so the values of one scrape are from one
instant: per camera ``frames_in_total = frames_out_total + frames_dropped_total +
frames_lost_total + frames_in_flight`` holds exactly in every scrape.

Exported (names, types, labels): see ``METRICS`` below and the README's Metrics section.

One HTTP server (``metrics.host``:``metrics.port``; port 0 picks a free one) serves:

- ``/metrics``: the Prometheus exposition;
- ``/healthz``: liveness, 200 while the supervisor's loop runs (it polls every 0.2 s; 503 when
  it has not for ``HEALTH_STALE_S``), and while it starts or stops;
- ``/readyz``: readiness, 200 once the configured cameras are planned, the engine is loaded and
  every stage process is up, 503 otherwise and while stopping; both answer JSON with a reason.

Example::

    m = PipelineMetrics(["lobby"], port=0)       # binds now: OSError when the port is taken
    m.url                                        # "http://127.0.0.1:40123/metrics"
    snap = Snapshot.take({"lobby": ring}, {"lobby": ("online", "")}, {}, pool, up, restarts)
    m.update(snap)
    m.rate("out:lobby")                          # results per second (console)
    m.close()
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from engines.progress import Rate
from pipeline.events import CAMERA_STATES
from pipeline.shm import LATENCY_BUCKETS, BatchPool, FrameRing, ValueBoard

STAGES = ("ingest", "tile", "inference", "post")
CORE_STAGES = ("tile", "inference", "post")  # readiness: these must run (and recorder/redis if any)
HEALTH_STALE_S = 10.0  # /healthz fails when the supervisor loop (0.2 s poll) is this late

# name -> (type, labels, help): the whole exported surface (tests and the dashboard check it)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "crowdstream_run_info": ("gauge", ("run_id",), "Always 1; the run's id as a label."),
    "crowdstream_people": ("gauge", ("camera",),
                           "Smoothed people count of the camera's latest counted frame."),
    "crowdstream_zone_people": ("gauge", ("camera", "zone"),
                                "People in the zone on the camera's latest counted frame."),
    "crowdstream_people_density_m2": ("gauge", ("camera",),
                                      "People per square metre of the camera's calibrated "
                                      "ground (calibrated cameras only)."),
    "crowdstream_zone_density_m2": ("gauge", ("camera", "zone"),
                                    "People per square metre in the zone (calibrated cameras "
                                    "only)."),
    "crowdstream_alert_active": ("gauge", ("camera", "rule", "zone", "severity"),
                                 "1 while the alert rule is active, else 0 (zone is empty for "
                                 "a rule on the whole camera)."),
    "crowdstream_frames_in": ("counter", ("camera",),
                              "Frames the source delivered to the pipeline (written to the "
                              "camera's ring, or refused by a full ring under `latest`)."),
    "crowdstream_frames_out": ("counter", ("camera",), "Frames counted (a result emitted)."),
    "crowdstream_frames_dropped": ("counter", ("camera",),
                                   "Frames the `latest` queue policy dropped (refused by a full "
                                   "ring, or unread and replaced by a newer frame)."),
    "crowdstream_frames_lost": ("counter", ("camera",),
                                "Frames lost to a stage crash (never counted)."),
    "crowdstream_frames_in_flight": ("gauge", ("camera",),
                                     "Frames in the pipeline now: in - out - dropped - lost."),
    "crowdstream_latency_seconds": ("histogram", ("camera",),
                                    "Capture (decode) to result latency of counted frames."),
    "crowdstream_queue_depth": ("gauge", ("camera", "edge"),
                                "Frames waiting on a camera's edge: frames (ring -> tile "
                                "stage), recorder (post -> recorder)."),
    "crowdstream_batch_queue_depth": ("gauge", ("edge",),
                                      "Tile batches waiting on a shared edge: infer (-> "
                                      "inference), post (-> post stage)."),
    "crowdstream_camera_state": ("gauge", ("camera", "state"),
                                 "1 for the camera's current state, 0 for the others."),
    "crowdstream_inference_tiles": ("counter", ("model",), "Tiles run through the model."),
    "crowdstream_inference_batches": ("counter", ("model",), "Batches run through the model."),
    "crowdstream_tiles": ("counter", ("camera",), "Tiles the camera's frames were cut into."),
    "crowdstream_tiles_reused": ("counter", ("camera",),
                                 "Tiles of the camera's frames the motion gate reused (the "
                                 "density of the frame they were last counted on; not run)."),
    "crowdstream_stage_restarts": ("counter", ("stage",),
                                   "Crashes of the stage restarted by the supervisor."),
    "crowdstream_stage_up": ("gauge", ("stage",), "1 while the stage's process(es) run."),
}


def exported_series(name: str) -> list[str]:
    """The series names a metric family shows in the text exposition (``_total`` for counters,
    ``_bucket``/``_sum``/``_count`` for histograms)."""
    kind = METRICS[name][0]
    if kind == "counter":
        return [f"{name}_total"]
    if kind == "histogram":
        return [f"{name}_bucket", f"{name}_sum", f"{name}_count"]
    return [name]


@dataclass
class CameraSnapshot:
    ring: dict[str, int]  # FrameRing.stats()
    latencies: np.ndarray  # recent capture->result latencies, seconds
    state: str = "starting"
    reason: str = ""
    total_frames: int | None = None  # files: decoded frames expected (progress bar)
    hist: list[int] = field(default_factory=list)  # per LATENCY_BUCKETS bound + Inf, not cumulative
    lat_sum: float = 0.0
    span: tuple[float, float] | None = None  # FrameCounters.counting_span()
    recorder_depth: int | None = None  # frames waiting for the recorder (recorded cameras)
    model: str = ""  # the label of the model counting the camera

    @property
    def frames_in(self) -> int:
        """Frames offered to the pipeline: written into the ring or refused by it."""
        return self.ring["puts"] + self.ring.get("refused", 0)

    @property
    def in_flight(self) -> int:
        r = self.ring
        return self.frames_in - r["emitted"] - r["drops"] - r["lost"]


@dataclass
class Snapshot:
    ts: float
    cameras: dict[str, CameraSnapshot]
    pool: dict[str, int] = field(default_factory=dict)  # BatchPool.stats(), summed over models
    restarts: dict[str, int] = field(default_factory=dict)  # stage -> crash count
    up: dict[str, bool] = field(default_factory=dict)
    values: dict[tuple[str, ...], float] = field(default_factory=dict)  # ValueBoard.read()
    stopping: bool = False
    pools: dict[str, dict[str, int]] = field(default_factory=dict)  # model label -> its pool's

    @classmethod
    def take(cls, rings: Mapping[str, FrameRing], states: Mapping[str, tuple[str, str]],
             totals: Mapping[str, int | None],
             pool: BatchPool | Mapping[str, BatchPool] | None,
             up: Mapping[str, bool], restarts: Mapping[str, int], *,
             board: ValueBoard | None = None,
             recorder_rings: Mapping[str, FrameRing] | None = None,
             stopping: bool = False, models: Mapping[str, str] | None = None) -> Snapshot:
        """Read every camera's ring (``states``: camera -> (state, reason); ``totals``: camera ->
        frames expected, for files), the batch pool (or each model's: label -> pool), the post
        stage's live values and the recorder's queues, now. ``stopping``: the run is stopping
        (readiness says so); ``models``: camera -> the label of its model."""
        cams = {}
        for name, r in rings.items():
            hist, lat_sum = r.counters.latency_histogram()
            rec = (recorder_rings or {}).get(name)
            cams[name] = CameraSnapshot(r.stats(), r.counters.latency_samples(),
                                        *states.get(name, ("starting", "")), totals.get(name),
                                        hist, lat_sum, r.counters.counting_span(),
                                        rec.depth if rec is not None else None,
                                        (models or {}).get(name, ""))
        pools = {"": pool} if isinstance(pool, BatchPool) else dict(pool or {})
        per = {label: p.stats() for label, p in pools.items()}
        total: dict[str, int] = {}
        for st in per.values():
            for k, v in st.items():
                total[k] = total.get(k, 0) + v
        return cls(time.time(), cams, total, dict(restarts), dict(up),
                   board.read() if board is not None else {}, stopping, per)

    def batch_fill(self) -> float | None:
        """Tiles run per batch over the tiles a batch holds, every model together (None before
        the first batch)."""
        room = sum(p["batches"] * p["max_batch"] for p in self.pools.values())
        return sum(p["tiles"] for p in self.pools.values()) / room if room else None

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


def _families(snap: Snapshot | None, run_id: str) -> Iterator[Metric]:
    """The exposition of one snapshot."""
    fam: dict[str, Any] = {}
    for name, (kind, labels, doc) in METRICS.items():
        cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
               "histogram": HistogramMetricFamily}[kind]
        fam[name] = cls(name, doc, labels=list(labels))
    fam["crowdstream_run_info"].add_metric([run_id], 1.0)
    if snap is not None:
        _camera_families(fam, snap)
        _value_families(fam, snap.values)
        _pipeline_families(fam, snap)
    yield from (f for f in fam.values() if f.samples)  # a family is shown once it has a value


def _camera_families(fam: dict[str, Any], snap: Snapshot) -> None:
    bounds = [f"{b:g}" for b in LATENCY_BUCKETS] + ["+Inf"]
    for cam, c in snap.cameras.items():
        r = c.ring
        fam["crowdstream_frames_in"].add_metric([cam], c.frames_in)
        fam["crowdstream_frames_out"].add_metric([cam], r["emitted"])
        fam["crowdstream_frames_dropped"].add_metric([cam], r["drops"])
        fam["crowdstream_frames_lost"].add_metric([cam], r["lost"])
        fam["crowdstream_frames_in_flight"].add_metric([cam], c.in_flight)
        fam["crowdstream_queue_depth"].add_metric([cam, "frames"], r["depth"])
        fam["crowdstream_tiles"].add_metric([cam], r.get("tiles", 0))
        fam["crowdstream_tiles_reused"].add_metric([cam], r.get("tiles_reused", 0))
        if c.recorder_depth is not None:
            fam["crowdstream_queue_depth"].add_metric([cam, "recorder"], c.recorder_depth)
        for s in CAMERA_STATES:
            fam["crowdstream_camera_state"].add_metric([cam, s], 1.0 if s == c.state else 0.0)
        if c.hist:
            cum = np.cumsum(c.hist).tolist()
            fam["crowdstream_latency_seconds"].add_metric(
                [cam], list(zip(bounds, cum, strict=True)), c.lat_sum)


def _value_families(fam: dict[str, Any], values: Mapping[tuple[str, ...], float]) -> None:
    target = {"people": "crowdstream_people", "density_m2": "crowdstream_people_density_m2",
              "zone_people": "crowdstream_zone_people",
              "zone_density_m2": "crowdstream_zone_density_m2",
              "alert": "crowdstream_alert_active"}
    for key, v in values.items():
        name = target.get(key[0])
        if name is not None and math.isfinite(v):
            fam[name].add_metric(list(key[1:]), v)


def _pipeline_families(fam: dict[str, Any], snap: Snapshot) -> None:
    for label, p in snap.pools.items():
        fam["crowdstream_inference_tiles"].add_metric([label], p["tiles"])
        fam["crowdstream_inference_batches"].add_metric([label], p["batches"])
    if snap.pool:
        fam["crowdstream_batch_queue_depth"].add_metric(["infer"], snap.pool["queued_infer"])
        fam["crowdstream_batch_queue_depth"].add_metric(["post"], snap.pool["queued_post"])
    stages = list(dict.fromkeys([*STAGES, *snap.up, *snap.restarts]))
    for stage in stages:
        fam["crowdstream_stage_restarts"].add_metric([stage], snap.restarts.get(stage, 0))
        fam["crowdstream_stage_up"].add_metric([stage], 1.0 if snap.up.get(stage) else 0.0)


class _Collector:
    """Hands the registry the latest snapshot's families (``describe`` empty: nothing is
    collected at registration)."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return self.source()


@dataclass
class RunHealth:
    """What ``/healthz`` and ``/readyz`` answer from: the configured cameras, the startup step,
    and the latest snapshot with the time it was taken (the supervisor loop's heartbeat)."""

    cameras: list[str]
    run_id: str = ""
    phase: str = "starting"  # starting | running | stopping | stopped
    step: str = ""  # startup step in progress
    beat: float | None = None  # time.monotonic() of the last snapshot
    snap: Snapshot | None = None
    stale_s: float = HEALTH_STALE_S

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        doc: dict[str, Any] = {"phase": self.phase, "run_id": self.run_id}
        if self.phase == "running" and self.beat is not None:
            age = time.monotonic() - self.beat
            doc["loop_age_s"] = round(age, 3)
            if age > self.stale_s:
                doc.update(status="fail", reason=f"the supervisor loop has not run for "
                                                 f"{age:.1f} s (limit {self.stale_s:g} s)")
                return False, doc
            doc.update(status="ok", reason="the supervisor loop is running")
        else:
            doc.update(status="ok", reason={"starting": f"starting ({self.step or 'init'})",
                                            "stopping": "stopping",
                                            "stopped": "stopped"}.get(self.phase, self.phase))
        return True, doc

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        snap = self.snap
        doc: dict[str, Any] = {"phase": self.phase, "run_id": self.run_id,
                               "cameras_configured": len(self.cameras)}
        if snap is None or self.phase == "starting":
            return False, {**doc, "ready": False, "reason": f"starting ({self.step or 'init'})"}
        planned = [c for c in self.cameras if c in snap.cameras]
        stages = {s: bool(snap.up.get(s)) for s in snap.up if s != "ingest"}
        doc.update(cameras_planned=len(planned), engine_loaded=bool(snap.pool), stages=stages,
                   cameras={n: c.state for n, c in snap.cameras.items()})
        reason = ""
        if self.phase != "running" or snap.stopping:
            reason = "stopping"
        elif len(planned) < len(self.cameras):
            missing = [c for c in self.cameras if c not in snap.cameras]
            reason = f"cameras not planned: {', '.join(missing)}"
        elif not snap.pool:
            reason = "engine not loaded"
        else:
            down = [s for s in CORE_STAGES if not snap.up.get(s)]
            down += [s for s, ok in stages.items() if s not in CORE_STAGES and not ok]
            if down:
                reason = f"stage(s) not running: {', '.join(down)}"
        ready = not reason
        doc.update(ready=ready, reason=reason or (
            f"{len(planned)} camera(s) planned, engine loaded, stages up"))
        return ready, doc


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up the run's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass  # one line per scrape on stderr would bury the run's own output


class PipelineMetrics:
    """The run's Prometheus collector (own registry), console rates and health state; with a
    ``port`` (0: any free one) also the HTTP server, bound in the constructor (``OSError`` when
    the address is taken). ``stale_s``: ``/healthz`` fails when no snapshot came for this long
    while running."""

    def __init__(self, cameras: list[str], port: int | None = None, host: str = "127.0.0.1",
                 run_id: str = "", stale_s: float = HEALTH_STALE_S) -> None:
        self.cameras = cameras
        self.run_id = run_id
        self.health = RunHealth(list(cameras), run_id, stale_s=stale_s)
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(lambda: _families(self.last, self.run_id)))
        self._prom = make_wsgi_app(self.registry)
        self._rates: dict[str, Rate] = {}
        self.last: Snapshot | None = None
        self.server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        if port is not None:
            self._serve(host, port)

    # ------------------------------------------------------------------ HTTP
    def _serve(self, host: str, port: int) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        server_cls = type("_BoundServer", (_Server,), {"address_family": family})
        self.server = make_server(host, port, self._app, server_cls, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-http",
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int | None:
        """The port actually bound (the chosen one for port 0); None without a server."""
        return int(self.server.server_port) if self.server is not None else None

    @property
    def url(self) -> str | None:
        """``http://host:port/metrics`` (None without a server)."""
        if self.server is None:
            return None
        host = self.server.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok, doc = self.health.liveness() if path == "/healthz" else self.health.readiness()
            body = json.dumps(doc).encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
            return [body]
        if path == "/metrics":
            return self._prom(environ, start_response)
        body = b"crowdstream: /metrics /healthz /readyz\n"
        start_response("404 Not Found" if path != "/" else "200 OK",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    # ------------------------------------------------------------------ updates
    def _rate(self, key: str, ts: float, total: int) -> float:
        return self._rates.setdefault(key, Rate(weight=0.5)).update(ts, total)

    def step(self, name: str) -> None:
        """The supervisor's startup step in progress (readiness says it)."""
        self.health.step = name

    def update(self, snap: Snapshot) -> None:
        """Take a new snapshot: the next scrape shows it; also the supervisor's heartbeat."""
        ts = snap.ts
        tiled = emitted = 0
        for cam, c in snap.cameras.items():
            r = c.ring
            self._rate(f"in:{cam}", ts, c.frames_in)
            self._rate(f"out:{cam}", ts, r["emitted"])
            tiled += r["tiled"]
            emitted += r["emitted"]
        self._rate("tile", ts, tiled)
        self._rate("post", ts, emitted)
        if snap.pool:
            self._rate("inference", ts, snap.pool["tiles"])
        self.last = snap  # one reference swap: a scrape sees this snapshot or the previous one
        h = self.health
        h.snap, h.beat = snap, time.monotonic()
        h.phase = "stopping" if snap.stopping else "running"

    def rate(self, key: str) -> float:
        """A smoothed per-second rate for the console: ``in:<camera>``, ``out:<camera>``,
        ``tile``, ``post``, ``inference`` (0.0 before two snapshots)."""
        r = self._rates.get(key)
        return r.value if r is not None else 0.0

    def close(self) -> None:
        self.health.phase = "stopped"
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def throughput(snap: Snapshot) -> str:
    """``300 frames counted in 12.1 s: 24.8 frames/s``, every camera together, from the first
    counted frame's capture to the last result (the run's summary shows it); "" before two
    frames were counted."""
    spans = [c.span for c in snap.cameras.values() if c.span is not None]
    n = sum(c.ring["emitted"] for c in snap.cameras.values())
    if n < 2 or not spans:
        return ""
    secs = max(s[1] for s in spans) - min(s[0] for s in spans)
    return f"{n} frames counted in {secs:.1f} s: {n / secs:.1f} frames/s" if secs > 0 else ""


__all__ = ["HEALTH_STALE_S", "METRICS", "CameraSnapshot", "PipelineMetrics", "RunHealth",
           "Snapshot", "exported_series", "throughput"]
