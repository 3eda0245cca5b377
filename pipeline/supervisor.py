"""The supervisor: plans a run, then spawns, watches and restarts every child of it.

Children (all through ``pipeline.process.spawn_child``, spawn context): one ingest per camera ->
its ``FrameRing`` -> tile -> inference (the only one importing torch) -> post (stitch, smooth,
sinks) -> recorder (when a camera records); and one service, the embedded Redis (when no
``redis.url`` is set). Before anything else the metrics endpoint is bound (``metrics.port``: a
taken port is a config error before any process starts) and its address printed; then startup
runs in named steps, each logged:

1. plan cameras -- this worker's cameras (all, or its shard's with ``shard``: ``pipeline.shard``),
   each camera's frame size and queue policy, and the models (the global one and the cameras'
   own: one per distinct file);
2. check /dev/shm -- the computed need (clear error naming it), then the frame rings, every
   segment under the run prefix (``RunSegments``);
3. start services -- the embedded Redis; with ``runtime.resume``, each camera's last frame
   index already in Redis (ingest continues after it);
4. load engine -- the inference process loads one engine per model and reports each one's window;
   one batch pool per model is sized to its engine;
5. start stages -- recorder rings and process, tile, post, and one ingest per camera.

Watching: one ``RestartPolicy`` (exponential backoff, reset after a stable run) for every child.
An inference crash re-queues the batch each pool had in it (no frame lost, order kept); a tile or
post crash restarts the tile/inference/post chain and gives the frames they held back (counted as
lost); an ingest killed without ending its stream is restarted; a recorder crash gives its ring
slots back and restarts it; a dead Redis is restarted on the same port and data. Camera state
changes are relayed from ingest to post (for sinks' ``write_status``). The status line and metrics
are the console's and the metrics' (``pipeline.console``, ``pipeline.metrics``); the supervisor
only takes the ``Snapshot`` each poll.

A shard that owns no camera (more workers than cameras) starts only the services and idles until
a signal, so a StatefulSet's spare pods stay healthy instead of restarting.

Signals: SIGINT / SIGTERM stop ingest and let queued frames drain (``runtime.drain_timeout_s``);
a second signal ends the drain at once. SIGHUP, or a ``reload`` request on the Redis control
stream (the console's zone editor sends one), re-reads the config file and applies zone and alert
changes without a restart (``pipeline.reload``); other changes are refused with a log line. With
files only, the run ends when every source has ended and drained and the post stage has handed
every camera's end to the sinks (at most ``ENDS_WAIT_S`` later). Shutdown: stages, then the
recorder (it finishes its segments), then Redis (last), then every segment is unlinked and checked
gone.

Example::

    cfg = load_config("configs/demo.yaml")
    sys.exit(Supervisor(cfg).run())
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engines.log import get_logger
from engines.video import probe_video, redact_url
from engines.yamlconfig import ConfigError
from pipeline.config import AppConfig, CameraConfig
from pipeline.console import RunConsole
from pipeline.events import STOP_REASON, CameraStatus
from pipeline.metrics import PipelineMetrics, Snapshot, throughput
from pipeline.process import ChildSpec, RestartPolicy, RestartState, StopFlag, spawn_child
from pipeline.redis_embedded import connect_hint, embedded_data_dir
from pipeline.reload import ControlListener, SettingsUpdate, live_changes
from pipeline.services import RedisService
from pipeline.shard import ShardSpec
from pipeline.shm import BatchPool, FrameRing, PoolSet, RunSegments, ValueBoard, check_shm_space
from pipeline.sinks.live_values import live_value_keys
from pipeline.sinks.recorder import RECORDER_TARGET, RecorderArgs, recorder_rings
from pipeline.stages import inference as inference_stage
from pipeline.stages.common import ModelSlot, StageArgs

POLL_S = 0.2
ENGINE_LOAD_TIMEOUT_S = 900.0  # exporting a large checkpoint to ONNX on a CPU takes minutes
RESUME_TIMEOUT_S = 20.0  # resume must read Redis before counting; longer: fail, be restarted
RECORDER_STOP_S = 30.0  # the recorder encodes what is queued and closes its segments
# how long a run whose sources all ended waits for the post stage to hand each camera's end to
# the sinks; only a post stage that died with ends in its queue needs more (they are lost then)
ENDS_WAIT_S = 5.0
CHAIN = ("tile", "inference", "post")


# exit codes of a run (README "Exit status")
EXIT_OK = 0  # every source finished, or an operator stopped (SIGINT/SIGTERM) a healthy run
EXIT_OFFLINE = 1  # a camera ended offline (bad file, max_attempts...); or the run failed to start
EXIT_CONFIG = 2  # a configuration error, a model or engine that cannot be loaded included
EXIT_DATA_LOST = 3  # frames lost or abandoned, or messages never published (see the summary)


class PipelineError(RuntimeError):
    """The pipeline could not start or keep running; the message says why."""


@dataclass(frozen=True)
class CameraTally:
    """What became of one camera's frames, for the run's summary line and exit status.

    ``dropped`` (the ``latest`` policy skipping stale frames of a live camera) and
    ``unrecorded`` (the recorder behind, or restarting) are by design and are reported; ``lost``
    (frames a crashed stage held), ``abandoned`` (frames still queued when a stop's drain timed
    out) and ``unpublished`` (messages evicted from the Redis outage buffer, unsent at close,
    lost with a killed post process or refused) are data lost.
    """

    counted: int = 0
    dropped: int = 0
    lost: int = 0
    abandoned: int = 0
    unpublished: int = 0
    unrecorded: int = 0

    @property
    def data_lost(self) -> bool:
        return bool(self.lost or self.abandoned or self.unpublished)

    def describe(self, redis: bool, recording: bool) -> str:
        text = f"{self.counted} counted, {self.dropped} dropped, {self.lost} lost"
        if self.abandoned:
            text += f", {self.abandoned} abandoned"
        if redis:
            text += f", {self.unpublished} unpublished"
        if recording:
            text += f", {self.unrecorded} not recorded"
        return text


@dataclass
class _Child:
    """One supervised child: a process, or a service with the same ``is_alive``/``exitcode``."""

    key: str  # "ingest:<camera>", "tile", "inference", "post", "recorder", "redis"
    stage: str  # the key without the camera
    proc: Any = None
    restart: RestartState = field(default_factory=RestartState)
    done: bool = False  # exited for good (ingest of a finished source, or stopping)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()


@dataclass
class _Camera:
    name: str
    cfg: CameraConfig
    height: int
    width: int
    total_frames: int | None
    ring: FrameRing | None = None
    state: str = "starting"
    reason: str = ""
    published_index: int = -1  # last frame index in Redis at start (runtime.resume)
    ends_sent: int = 0  # end states (finished, offline) relayed to the post stage


@dataclass
class Supervisor:
    """Runs one ``AppConfig`` until its sources end or a signal arrives; ``run()`` -> exit code."""

    cfg: AppConfig
    log_level: str | None = None
    console: bool = True
    status_stream: Any = None  # default sys.stderr
    overrides: dict[str, Any] | None = None  # command-line overrides: a reload re-applies them
    shard: ShardSpec | None = None  # run only this shard's cameras (None: all)
    log: Any = field(init=False)

    def __post_init__(self) -> None:
        rt = self.cfg.runtime
        self.log = get_logger("supervisor")
        self.ctx = mp.get_context("spawn")
        self.segments = RunSegments()
        self.prefix = self.segments.prefix
        # in every published record (Redis, JSON lines): tells this run's data from another's
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
        self.policy = RestartPolicy(rt.restart_backoff_s, rt.restart_backoff_cap_s)
        self.drain_timeout_s = rt.drain_timeout_s  # a second signal sets it to 0 (not the config)
        self.children: dict[str, _Child] = {}
        self.cams: list[_Camera] = []
        self.pools: list[BatchPool] = []  # one per model, in the order of self.choices
        self.rec_rings: dict[str, FrameRing] = {}
        self.redis: RedisService | None = None
        self.redis_url: str | None = None
        self.metrics: PipelineMetrics | None = None
        self.values: ValueBoard | None = None  # the post stage's live values, for the metrics
        self.engine: dict[str, Any] = {}  # the first model's engine (the only one, usually)
        self.engines: list[dict[str, Any]] = []  # every model's engine: geometry, id, label
        self.choices: list[inference_stage.ModelChoice] = []
        self.camera_models: dict[str, int] = {}  # camera -> index into choices / pools
        self.exit_reason = ""
        self.last_snapshot: Snapshot | None = None
        self.tallies: dict[str, CameraTally] = {}  # per camera, taken at shutdown
        self._signal: int | None = None
        self.out = RunConsole(stream=self.status_stream, status=self.console,
                              every_s=self.cfg.metrics.status_every_s)
        self.stop_ingest = StopFlag(self.ctx)
        self.stop_stages = StopFlag(self.ctx)
        self.stop_recorder = StopFlag(self.ctx)
        self.pool_ready = StopFlag(self.ctx)
        self.pool_handles: list[Any] = []  # made once the models are planned
        # one events queue per ingest process and one status queue per post process, made fresh
        # at each spawn: a process SIGKILLed in the middle of a queue operation can leave a
        # queue's lock taken or half a message in its pipe, and that must not reach the others
        self.inbox: queue.Queue[CameraStatus] = queue.Queue()
        self.event_queues: dict[str, Any] = {}
        self.readers: list[threading.Thread] = []
        self.status_q: Any = None
        self.info_q: Any = self.ctx.Queue()
        self.control: ControlListener | None = None  # reload requests from Redis
        self._hup = False

    # ================================================================== run
    def run(self) -> int:
        """Start, supervise until the sources end or SIGINT/SIGTERM, clean up, then print the
        summary line. Exit code (``EXIT_*``): 0 when every source finished or an operator stopped
        a healthy run, 1 when a camera ended offline (also when the run was stopped after that),
        3 when data was lost (frames lost, messages never published), 2 for configuration errors
        (raised as ``ConfigError``, a model that cannot be loaded included)."""
        self.out.start()  # before any child: their output scrolls above the status
        try:
            with self._signals():
                try:
                    self._startup()
                    self._watch()
                finally:
                    self._shutdown()
            return self._finish()
        finally:
            self.out.close()

    # ================================================================== signals
    @contextmanager
    def _signals(self) -> Iterator[None]:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:
            self.log.warning("second signal: stopping now", signal=signum)
            self.drain_timeout_s = 0.0
        self._signal = signum

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._hup = True  # the watch loop reloads (not here: a handler must not do I/O)

    # ================================================================== startup
    def _startup(self) -> None:
        self._start_metrics()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("plan cameras", self._plan_cameras), ("check /dev/shm", self._check_shm),
            ("start services", self._start_services), ("load engine", self._load_engine),
            ("start stages", self._start_stages)]
        for i, (name, step) in enumerate(steps, 1):
            if self._signal is not None:
                raise PipelineError(f"interrupted before '{name}'")
            if i > 1 and not self.cams and name != "start services":
                continue  # an idle shard: services only
            self.log.info("startup", step=f"{i}/{len(steps)} {name}", run_id=self.run_id)
            if self.metrics is not None:
                self.metrics.step(f"{i}/{len(steps)} {name}")
            step()

    def _start_metrics(self) -> None:
        """Bind the metrics endpoint first: a taken port is a config error before any process
        or segment exists. Port 0 picks a free port; the address is printed either way."""
        m = self.cfg.metrics
        names = [n for n, c in self.cfg.cameras.items() if c.enabled]
        try:
            self.metrics = PipelineMetrics(names, m.port, m.host, run_id=self.run_id)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(self.cfg.source_file, "metrics.port",
                                  f"{m.host}:{m.port} is already in use (another crowdstream "
                                  f"run?); set metrics.port to a free port, 0 to pick one "
                                  f"(printed at start), or null for no endpoint "
                                  f"(command line: --metrics-port 0)") from None
            raise ConfigError(self.cfg.source_file, "metrics.host",
                              f"cannot serve metrics on {m.host}:{m.port}: {e}") from None
        self.out.metrics = self.metrics
        if self.metrics.url is not None:
            base = self.metrics.url.rsplit("/", 1)[0]
            self.out.note(f"metrics at {self.metrics.url} (health: {base}/healthz, "
                          f"{base}/readyz)")
            self.log.info("metrics", url=self.metrics.url)
            self.values = self.segments.value_board("values", live_value_keys(self.cfg.cameras))

    def _plan_cameras(self) -> None:
        cfg, rt = self.cfg, self.cfg.runtime
        enabled = [(n, c) for n, c in cfg.cameras.items() if c.enabled]
        if not enabled:
            raise ConfigError(cfg.source_file, "cameras", "every camera is disabled "
                                                          "(enabled: false)")
        if self.shard is not None:
            mine = [(n, c) for n, c in enabled if self.shard.owns(n)]
            self.log.info("shard", shard=str(self.shard), cameras=len(mine), of=len(enabled))
            if not mine:
                self.out.note(f"shard {self.shard} owns none of the {len(enabled)} enabled "
                              f"camera(s): idle until stopped")
            enabled = mine
        for name, cam in enabled:
            probed = probe_video(cam)
            if probed is not None:
                h, w, n = probed.height, probed.width, probed.frames
                total = None if (cam.loop or cam.is_live) else n
            else:
                h, w, total = rt.max_frame_height, rt.max_frame_width, None
            self.cams.append(_Camera(name, cam, h, w, total))
            self.log.info("camera", camera=name, url=redact_url(cam.url),
                          policy=cam.effective_policy, size=f"{w}x{h}")
        self._plan_models()

    def _plan_models(self) -> None:
        """One model per distinct file among the cameras' own and the global one; each gets a
        batch pool handle now (the pool itself once its engine's geometry is known)."""
        plan = inference_stage.plan_models(self.cfg, [c.name for c in self.cams])
        self.choices, self.camera_models = plan.choices, plan.cameras
        for choice in self.choices:
            if choice.fallback_reason or choice.random_init:
                msg = (f"model: {choice.label}"
                       + (f" -- {choice.fallback_reason}" if choice.fallback_reason else ""))
                self.out.note(f"WARNING {msg}")
                self.log.warning("random init model", model=choice.random_init,
                                 reason=choice.fallback_reason or "model.random_init")
        # several pools: the inference and post processes wait on all of them through one pair
        wake = PoolSet.wake_pair() if len(self.choices) > 1 else None
        slots = self.cfg.runtime.batch_slots
        self.pool_handles = [self.segments.batch_pool_handle(
            "batches" if i == 0 else f"batches{i}", slots, wake) for i in range(len(self.choices))]

    def _check_shm(self) -> None:
        rt = self.cfg.runtime
        need = sum(FrameRing.nbytes(rt.frame_slots, c.height, c.width) for c in self.cams)
        check_shm_space(need, f"{len(self.cams)} camera ring(s) of {rt.frame_slots} slots")
        for i, c in enumerate(self.cams):
            c.ring = self.segments.frame_ring(f"r{i}", rt.frame_slots, c.height, c.width,
                                              c.cfg.effective_policy, camera=c.name)
            self.log.info("ring", camera=c.name, ring=f"{rt.frame_slots}x{c.width}x{c.height}")

    def _start_services(self) -> None:
        cfg = self.cfg
        if cfg.redis.enabled and cfg.redis.url:
            self.redis_url = cfg.redis.url
        elif cfg.redis.enabled:
            self.redis = RedisService(embedded_data_dir(cfg), cfg.redis.embedded_port)
            try:
                self.redis_url = self.redis.start()
            except (RuntimeError, OSError) as e:  # ServiceError, or the server's own log tail
                raise PipelineError(f"cannot start the embedded Redis: {e}") from None
            self._add_child("redis", self.redis)
            self.log.info("spawned", stage="redis", pid=self.redis.pid)
            self.out.note(f"embedded Redis at {redact_url(self.redis_url)} (data in "
                          f"{self.redis.data_dir}, password in {self.redis.password_file}); "
                          f"connect with: "
                          f"{connect_hint(self.redis_url, self.redis.password_file)}")
        if self.redis_url:
            self._start_control(self.redis_url)
        if cfg.runtime.resume and cfg.redis.enabled and self.cams:
            self._read_published_indices()

    def _read_published_indices(self) -> None:
        """``runtime.resume``: each camera's last frame index already in Redis, so a restarted
        (or re-sharded) worker continues every camera's numbering instead of starting at 0.
        Redis must answer within ``RESUME_TIMEOUT_S``: counting from 0 would break the
        numbering, so the worker fails and is restarted instead."""
        from pipeline.client import CrowdClient
        from pipeline.sinks.redis_publisher import connection_kwargs

        assert self.redis_url is not None
        rc = self.cfg.redis
        deadline = time.monotonic() + RESUME_TIMEOUT_S
        while True:
            try:
                client = CrowdClient(self.redis_url, rc.namespace, cluster=rc.cluster,
                                     **connection_kwargs(self.redis_url, rc))
                try:
                    for c in self.cams:
                        c.published_index = client.last_frame_index(c.name)
                finally:
                    client.close()
                break
            except Exception as e:  # noqa: BLE001 - any failure to read: retry, then refuse
                if time.monotonic() >= deadline or self._signal is not None:
                    raise PipelineError(f"runtime.resume: cannot read the last published frame "
                                        f"indices from {redact_url(self.redis_url)}: "
                                        f"{type(e).__name__}: {e}") from None
                time.sleep(1.0)
        for c in self.cams:
            if c.published_index >= 0:
                self.log.info("resume", camera=c.name, after_frame=c.published_index)

    def _load_engine(self) -> None:
        """The engines decide the windows, so inference starts first and each model's pool is
        sized to its engine."""
        cfg, rt = self.cfg, self.cfg.runtime
        self._spawn("inference")
        infos = self._wait_engine()
        labels = unique_labels([str(i.get("model") or "") or f"model{n}"
                                for n, i in enumerate(infos)])
        geometry = [(tuple(i["window"]), min(cfg.model.batch, int(i["max_batch"])),
                     int(i["block_size"])) for i in infos]
        check_shm_space(sum(BatchPool.nbytes(rt.batch_slots, b, w, k) for w, b, k in geometry),
                        f"the batch pool(s) ({len(infos)} x {rt.batch_slots} batches)")
        for n, (info, (window, max_batch, block)) in enumerate(zip(infos, geometry, strict=True)):
            self.pools.append(self.segments.batch_pool(self.pool_handles[n], max_batch, window,
                                                       block))
            self.engines.append({**info, "label": labels[n]})
            cams = [c for c, m in self.camera_models.items() if m == n]
            more = f", cameras {', '.join(cams)}" if len(infos) > 1 else ""
            self.out.note(f"engine {info['engine_id']} ({info['description'].get('backend')}, "
                          f"{info['description'].get('device')}, window {window[1]}x{window[0]}, "
                          f"batch {max_batch}), model {self.choices[n].label}{more}")
        self.engine = self.engines[0]
        self.pool_ready.set()

    def _wait_engine(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + ENGINE_LOAD_TIMEOUT_S
        p = self.children["inference"]
        while time.monotonic() < deadline:
            if self._signal is not None:
                raise PipelineError("interrupted while the engine was loading")
            try:
                info = self.info_q.get(timeout=POLL_S)
            except queue.Empty:
                if not p.alive():
                    raise PipelineError(f"the inference process exited with code "
                                        f"{p.proc.exitcode} while loading the engine") from None
                continue
            if "error" in info:
                n = int(info.get("model") or 0)
                cams = [c for c, m in self.camera_models.items() if m == n]
                raise ConfigError(self.cfg.source_file, self._model_key(n, cams),
                                  f"cannot load the model ({self.choices[n].label}) of "
                                  f"camera(s) {', '.join(cams)}: {info['error']}")
            return [dict(i) for i in info["engines"]]
        raise PipelineError(f"the engine did not load within {ENGINE_LOAD_TIMEOUT_S:.0f} s")

    def _model_key(self, n: int, cams: list[str]) -> str:
        """The config key that chose model ``n`` of ``cams`` (named when it cannot be loaded)."""
        own = [c for c in cams if self.cfg.cameras[c].model is not None]
        if own:
            return f"cameras.{own[0]}.model"
        m = self.cfg.model
        if self.choices[n].random_init:
            return "model.random_init"
        return "model.name" if m.name else "model.engine" if m.engine else "model.checkpoint"

    @property
    def recorded(self) -> set[str]:
        return {c.name for c in self.cams if c.cfg.recording.enabled}

    def _start_stages(self) -> None:
        recorded = {c.name: (c.height, c.width) for c in self.cams if c.cfg.recording.enabled}
        if recorded:
            self.rec_rings = recorder_rings(self.segments, self.cfg, recorded,
                                            min(int(e["block_size"]) for e in self.engines))
            self._spawn("recorder")
        self._spawn("tile")
        self._spawn("post")
        for c in self.cams:
            self._spawn(f"ingest:{c.name}")

    # ================================================================== spawning
    def _add_child(self, key: str, proc: Any = None) -> _Child:
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = _Child(key, key.split(":")[0])
        if proc is not None:
            child.proc = proc
            child.restart.started = time.monotonic()
            child.restart.restart_at = None
        return child

    def _stage_args(self) -> StageArgs:
        models = [ModelSlot(h, e.get("engine_id", ""), e.get("label", ""),
                            (e.get("description") or {}).get("resize"))
                  for h, e in zip(self.pool_handles,
                                  self.engines or [{}] * len(self.pool_handles), strict=True)]
        return StageArgs(self.cfg, [c.name for c in self.cams],
                         [c.ring.handle() for c in self.cams if c.ring is not None],
                         models, self.stop_stages, self.redis_url,
                         {cam: r.handle() for cam, r in self.rec_rings.items()}, self.run_id,
                         self.values.handle() if self.values is not None else None,
                         [self.camera_models[c.name] for c in self.cams])

    def _spawn(self, key: str) -> None:
        """Start (or restart) the child ``key``."""
        child = self._add_child(key)
        if child.stage == "redis":
            assert self.redis is not None
            self.redis.start()
            self._add_child(key, self.redis)
            self.log.info("spawned", stage=key, pid=self.redis.pid)
            return
        spec, args = self._child_args(child)
        self._add_child(key, spawn_child(self.ctx, spec, *args))
        self.log.info("spawned", stage=key, pid=child.proc.pid)

    def _child_args(self, child: _Child) -> tuple[ChildSpec, tuple[Any, ...]]:
        lvl = self.log_level
        if child.stage == "ingest":
            cam = next(c for c in self.cams if f"ingest:{c.name}" == child.key)
            assert cam.ring is not None
            events = self.event_queues[cam.name] = self.ctx.Queue()
            reader = threading.Thread(target=self._read_events, args=(events,), daemon=True,
                                      name=f"events-{cam.name}")
            reader.start()
            self.readers.append(reader)
            return (ChildSpec(f"ingest-{cam.name}", "pipeline.ingest:run_ingest",
                              self.stop_ingest, lvl, camera=cam.name),
                    (cam.name, cam.cfg, cam.ring.handle(), events, self.stop_ingest,
                     cam.published_index))
        if child.stage == "recorder":
            args = RecorderArgs(self.cfg, {c: r.handle() for c, r in self.rec_rings.items()},
                                self.stop_recorder)
            return ChildSpec("recorder", RECORDER_TARGET, self.stop_recorder, lvl), (args,)
        spec = ChildSpec(child.stage, f"pipeline.stages.{child.stage}:main", self.stop_stages,
                         lvl)
        if child.stage == "inference":
            # only the first inference process reports its engine; a restarted one must not
            # write into a queue nobody reads any more
            return spec, (self._stage_args(), self.choices,
                          None if self.engines else self.info_q, self.pool_ready)
        if child.stage == "post":
            self.status_q = self.ctx.Queue()
            return spec, (self._stage_args(), self.status_q)
        return spec, (self._stage_args(),)

    # ================================================================== watching
    def _watch(self) -> None:
        """Poll until the sources end (files) or a signal's drain is done (``exit_reason``)."""
        drain_from: float | None = None
        ends_from: float | None = None
        while True:
            time.sleep(POLL_S)
            self._relay_events()
            self._apply_reloads()
            self._check_children()
            snap = self._snapshot()
            if self._signal is not None and drain_from is None:
                self.log.info("stopping", signal=signal.Signals(self._signal).name,
                              drain_timeout_s=self.drain_timeout_s)
                self.stop_ingest.set()
                drain_from = time.monotonic()
            if drain_from is not None:
                ingest_gone = all(p.done or not p.alive() for p in self.children.values()
                                  if p.stage == "ingest")
                if ingest_gone and snap.drained():
                    self.exit_reason = "stopped by signal, drained"
                    break
                if time.monotonic() >= drain_from + self.drain_timeout_s:
                    self.exit_reason = "stopped by signal, drain timed out"
                    self.log.warning("drain timed out", pending=str({
                        k: v.ring["tiled"] - v.ring["emitted"] for k, v in snap.cameras.items()}))
                    break
            elif self.cams and snap.all_ended() and snap.drained():
                ends_from = time.monotonic() if ends_from is None else ends_from
                if self._ends_out(snap, ends_from):
                    self.exit_reason = "all sources ended"
                    break

    def _ends_out(self, snap: Snapshot, since: float) -> bool:
        """Every camera's end reached the sinks (so the alerts it ended show in the metrics and
        Redis has the final states before the stages stop), or ``ENDS_WAIT_S`` passed."""
        behind = [c.name for c in self.cams
                  if snap.cameras[c.name].ring.get("ends_out", 0) < c.ends_sent]
        if not behind:
            return True
        if time.monotonic() < since + ENDS_WAIT_S:
            return False
        self.log.warning("the post stage did not hand every end to the outputs",
                         cameras=",".join(behind), waited_s=ENDS_WAIT_S)
        return True

    def _finish(self) -> int:
        """The run's summary line (after every process stopped, so every output is accounted
        for) and its exit code."""
        tallies = self.tallies or {c.name: CameraTally() for c in self.cams}
        # a camera the run stopped (offline: stopped) is not a failure; one that went offline
        # for bad input before a signal stopped the run still is
        bad = [c.name for c in self.cams if c.state == "offline" and c.reason != STOP_REASON]
        lost = [k for k, t in tallies.items() if t.data_lost]
        parts = [f"{k}: {t.describe(self.cfg.redis.enabled, k in self.recorded)}"
                 for k, t in tallies.items()]
        fps = throughput(self.last_snapshot) if self.last_snapshot is not None else ""
        self.out.note(f"{self.exit_reason}; {'; '.join(parts)}" + (f"; {fps}" if fps else "")
                      + (f"; offline: {', '.join(bad)}" if bad else "")
                      + (f"; DATA LOST: {', '.join(lost)}" if lost else ""))
        return EXIT_OFFLINE if bad else EXIT_DATA_LOST if lost else EXIT_OK

    def _snapshot(self, force: bool = False) -> Snapshot:
        """Read the counters, feed the metrics and the console."""
        up: dict[str, bool] = {}
        restarts: dict[str, int] = {}
        for p in self.children.values():
            up[p.stage] = up.get(p.stage, True) and p.alive() if p.stage == "ingest" \
                else p.alive()
            restarts[p.stage] = restarts.get(p.stage, 0) + p.restart.crashes
        snap = Snapshot.take({c.name: c.ring for c in self.cams if c.ring is not None},
                             {c.name: (c.state, c.reason) for c in self.cams},
                             {c.name: c.total_frames for c in self.cams},
                             {e["label"]: p for e, p in zip(self.engines, self.pools, strict=True)},
                             up, restarts, board=self.values, recorder_rings=self.rec_rings,
                             stopping=self._signal is not None or bool(self.exit_reason),
                             models={c.name: self.engines[self.camera_models[c.name]]["label"]
                                     for c in self.cams} if self.engines else None)
        if self.metrics is not None:
            self.metrics.update(snap)
        self.out.update(snap, force=force)
        return snap

    def _check_children(self) -> None:
        now = time.monotonic()
        stopping = self.stop_stages.is_set()
        chain_restart = False
        for p in list(self.children.values()):
            if p.done or p.alive():
                continue
            if p.restart.restart_at is None:  # just died
                if self._ended_for_good(p, stopping):
                    p.done = True
                    continue
                self._crashed(p)
                chain_restart |= self._recover(p)
            elif now >= p.restart.restart_at and not stopping:
                if p.stage == "ingest" and self.stop_ingest.is_set():
                    p.done = True
                    continue
                self.log.info("restarting", stage=p.key, crashes=p.restart.crashes)
                try:
                    self._spawn(p.key)
                except Exception as e:  # a service that cannot start now: try again later
                    self.log.error("restart failed", stage=p.key, error=str(e))
                    self._crashed(p)
        if chain_restart:
            self._restart_chain()

    def _ended_for_good(self, p: _Child, stopping: bool) -> bool:
        """A child that exited and must not be restarted: a finished ingest, or anything while
        the run stops."""
        if p.stage == "ingest":
            ring = next(c.ring for c in self.cams if f"ingest:{c.name}" == p.key)
            assert ring is not None
            if ring.ended or self.stop_ingest.is_set():  # file finished, offline, or stop
                p.proc.join(0)
                return True
            return False
        return stopping and p.stage != "redis"

    def _crashed(self, p: _Child) -> None:
        delay = self.policy.crashed(p.restart, time.monotonic())
        self.log.error("stage crashed", stage=p.key, pid=p.proc.pid, exitcode=p.proc.exitcode,
                       crashes=p.restart.crashes, restart_in_s=round(delay, 2))
        if hasattr(p.proc, "join"):
            p.proc.join(0)
        if p.stage != "redis":
            self._break_stale_locks(p.key)

    def _recover(self, p: _Child) -> bool:
        """Give back what a dead child held; True when the tile/inference/post chain must
        restart."""
        if p.stage == "ingest":
            ring = next(c.ring for c in self.cams if f"ingest:{c.name}" == p.key)
            assert ring is not None
            ring.recover_writer()
        elif p.stage == "inference":
            n = sum(pool.requeue_inference() for pool in self.pools)
            self.log.warning("batches requeued", stage="inference", batches=n)
        elif p.stage == "recorder":
            lost = sum(r.recover_readers() for r in self.rec_rings.values())
            self.log.warning("recording frames lost", stage="recorder", frames=lost)
        return p.stage in ("tile", "post")

    def _break_stale_locks(self, who: str) -> None:
        """A child killed inside a ring's or the pool's critical section leaves its lock taken
        forever; give such locks back before anyone (this loop included) blocks on them."""
        rings = [(c.name, c.ring) for c in self.cams] + [
            (f"recorder:{n}", r) for n, r in self.rec_rings.items()]
        for name, r in rings:
            if r is not None and r.break_stale_lock():
                self.log.warning("broke stale lock", ring=name, dead=who)
        for n, pool in enumerate(self.pools):
            if pool.break_stale_lock():
                self.log.warning("broke stale lock", ring=f"batches{n or ''}", dead=who)

    def _restart_chain(self) -> None:
        """A tile or post process died: stop tile/inference/post, give back what they held, and
        start them again (after the dead one's backoff)."""
        chain = [self.children[k] for k in CHAIN]
        for p in chain:
            if p.alive():
                p.proc.kill()
                p.proc.join(5)
        self._break_stale_locks("tile/inference/post")  # killed mid-critical-section, maybe
        for pool in self.pools:
            pool.reset()
        lost = sum(c.ring.recover_readers() for c in self.cams if c.ring is not None)
        for r in self.rec_rings.values():  # post may have died writing into a recorder slot
            r.recover_writer()
        self.log.warning("stage chain restarted", lost_frames=lost)
        delay = max(self.policy.delay(p.restart.streak) for p in chain if p.restart.streak)
        for p in chain:
            p.restart.restart_at = time.monotonic() + delay

    def _read_events(self, events: Any) -> None:
        """Thread per ingest queue: a queue left broken by a killed writer blocks only this
        thread (daemon), never the supervisor's loop."""
        while True:
            try:
                item = events.get()
            except Exception:  # closed under us at shutdown, or broken by a killed writer
                return
            if item is None:
                return
            self.inbox.put(item)

    def _relay_events(self) -> None:
        while True:
            try:
                st: CameraStatus = self.inbox.get_nowait()
            except queue.Empty:
                return
            for c in self.cams:
                if c.name == st.camera:
                    c.state, c.reason = st.state, st.reason
                    c.ends_sent += bool(st.ended and self.status_q is not None)
            if self.status_q is not None:
                self.status_q.put(st)

    # ================================================================== live reload
    def _start_control(self, url: str) -> None:
        from pipeline.client import CrowdClient
        from pipeline.sinks.redis_publisher import connect

        r = self.cfg.redis
        client = CrowdClient(url, namespace=r.namespace, cluster=r.cluster,
                             client=connect(url, r))
        self.control = ControlListener(client)
        self.control.start()

    def _apply_reloads(self) -> None:
        """Answer SIGHUP and the control stream's reload requests (one reload serves all the
        requests that arrived since the last poll)."""
        ids: list[str] = []
        while self.control is not None:
            try:
                ids.append(self.control.requests.get_nowait())
            except queue.Empty:
                break
        if not (ids or self._hup):
            return
        self._hup = False
        ok, applied, message = self._reload()
        if self.control is not None:
            from pipeline.envelopes import control_reply

            for rid in ids:
                self.control.reply(control_reply(rid, time.time(), run_id=self.run_id, ok=ok,
                                                 message=message, applied=applied))

    def _reload(self) -> tuple[bool, list[str], str]:
        """Re-read the config file; apply zone/alert changes. (ok, cameras applied, message)."""
        from pipeline.config import load_config

        src = self.cfg.source_file
        if src is None:
            return False, [], "this run has no config file to re-read"
        try:
            new = load_config(src, self.overrides)
        except (ConfigError, OSError) as e:
            self.log.error("config not reloaded", error=str(e))
            return False, [], f"config not reloaded: {e}"
        changes = live_changes(self.cfg, new)
        if changes.refused:
            msg = (f"{src}: {changes.refused}: needs a restart (only zones and alerts apply "
                   f"live); nothing applied")
            self.log.warning("config change needs a restart", file=src, change=changes.refused)
            return False, [], msg
        if not changes.cameras:
            self.log.info("config re-read: no zone or alert change", file=src)
            return True, [], "no zone or alert change"
        self.cfg = new  # restarted stages get it too
        for c in self.cams:
            c.cfg = new.cameras[c.name]
        if self.status_q is not None:
            self.status_q.put(SettingsUpdate({c: new.cameras[c] for c in changes.cameras}))
        self.log.info("zones and alerts reloaded", cameras=",".join(changes.cameras))
        return True, changes.cameras, f"applied zones and alerts of {', '.join(changes.cameras)}"

    # ================================================================== shutdown
    def _shutdown(self) -> None:
        """Stop the stages, then the recorder, then the services; unlink every segment."""
        self.stop_ingest.set()
        self.stop_stages.set()
        time.sleep(0.05)
        self._relay_events_quiet()
        stages = [p for p in self.children.values() if p.stage not in ("recorder", "redis")]
        self._stop_processes(stages, max(2.0, min(10.0, self.drain_timeout_s)))
        self.stop_recorder.set()  # after post: what post queued is still recorded
        self._stop_processes([p for p in self.children.values() if p.stage == "recorder"],
                             RECORDER_STOP_S)
        self._relay_events_quiet()  # the cameras' last states (offline: stopped...)
        self._final_tallies()  # every writer of the counters has stopped
        self._close_queues()
        if self.control is not None:
            self.control.stop()
        if self.redis is not None:
            self.redis.stop()  # last: the post stage's sinks have flushed into it
        if self.metrics is not None:
            self.metrics.close()
        for c in self.cams:
            c.ring = None
        self.rec_rings.clear()
        self.pools = []
        self.values = None
        leaked = self.segments.unlink_all()
        if leaked:
            self.log.error("shared memory left behind", segments=",".join(leaked))

    def _final_tallies(self) -> None:
        if not self.cams or any(c.ring is None for c in self.cams):
            return  # startup did not get as far as the rings
        self.last_snapshot = snap = self._snapshot(force=True)
        for c in self.cams:
            r = snap.cameras[c.name].ring
            rec = self.rec_rings.get(c.name)
            self.tallies[c.name] = CameraTally(
                counted=r["emitted"], dropped=r["drops"], lost=r["lost"],
                # read but never counted: left in the ring or in the stages when the run stopped
                abandoned=max(0, r["depth"] + r["tiled"] - r["emitted"] - r["lost"]),
                unpublished=max(0, r["out_queued"] - r["out_delivered"]),
                unrecorded=r["unrecorded"] + (rec.counters.stats()["lost"] if rec else 0))

    def _stop_processes(self, procs: list[_Child], timeout: float) -> None:
        """Join ``procs`` (their stop flag is set) until ``timeout``, then terminate / kill."""
        deadline = time.monotonic() + timeout
        for p in procs:
            if p.proc is not None:
                p.proc.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.alive():
                self.log.warning("terminating", stage=p.key, pid=p.proc.pid)
                p.proc.terminate()
                p.proc.join(2.0)
                if p.proc.is_alive():
                    p.proc.kill()
                    p.proc.join(2.0)

    def _close_queues(self) -> None:
        for q in self.event_queues.values():
            q.put(None)  # ends its reader thread (unless a killed writer broke the queue)
        for t in self.readers:
            t.join(0.5)
        for q in [*self.event_queues.values(), self.status_q, self.info_q]:
            if q is not None:
                q.cancel_join_thread()
                q.close()

    def _relay_events_quiet(self) -> None:
        try:
            self._relay_events()
        except (OSError, ValueError):
            pass


def unique_labels(names: list[str]) -> list[str]:
    """``names`` made unique in order: a repeated name gets ``#2``, ``#3``... (two models whose
    cards share a name stay apart in metrics and records)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


__all__ = ["EXIT_CONFIG", "EXIT_DATA_LOST", "EXIT_OFFLINE", "EXIT_OK", "CameraTally",
           "PipelineError", "Supervisor", "unique_labels"]
