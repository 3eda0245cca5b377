"""The supervisor: owns every shared-memory segment, spawns and watches the stage processes.

Processes (spawn context): one ingest per camera -> per-camera ``FrameRing`` -> tile -> inference
(the only one importing torch) -> post (stitch, smooth, sinks). The supervisor

* creates all segments under a run-unique prefix, checks /dev/shm has room first (clear error
  with the computed need), and unlinks them all on exit -- also when a child was SIGKILLed;
* restarts a crashed stage with exponential backoff and counts crashes: an inference crash
  re-queues the batch it held (no frame lost, order kept); a tile or post crash restarts the
  tile/inference/post chain and gives the frames they held back (counted as lost); an ingest
  killed without ending its stream is restarted;
* relays camera state changes from ingest to the post stage (for sinks' ``write_status``);
* on SIGINT / SIGTERM stops ingest, lets queued frames drain (``runtime.drain_timeout_s``), stops
  the stages and exits; with files only, it finishes when every source has ended and drained;
* polls the shared counters for Prometheus metrics and the console status line / progress bar.

Example::

    cfg = load_config("configs/demo.yaml")
    sys.exit(Supervisor(cfg).run())
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engines.log import get_logger
from engines.video import probe_video
from engines.yamlconfig import ConfigError
from pipeline.config import AppConfig, CameraConfig
from pipeline.events import CameraStatus
from pipeline.metrics import CameraSnapshot, PipelineMetrics, Snapshot
from pipeline.shm import BatchPool, FrameRing, check_shm_space, run_prefix
from pipeline.stages import inference as inference_stage
from pipeline.stages.common import StageArgs, StopFlag, set_process_name

POLL_S = 0.2
ENGINE_LOAD_TIMEOUT_S = 900.0  # exporting a large checkpoint to ONNX on a CPU takes minutes


class PipelineError(RuntimeError):
    """The pipeline could not start or keep running; the message says why."""


@dataclass
class _Proc:
    """One supervised process and its crash bookkeeping."""

    stage: str  # "ingest", "tile", "inference", "post"
    key: str  # "ingest:<camera>" or the stage name
    proc: Any = None
    crashes: int = 0
    streak: int = 0  # crashes since it last ran stably (drives the backoff)
    started: float = 0.0
    restart_at: float | None = None
    done: bool = False  # exited for good (ingest of a finished source)


@dataclass
class _CamInfo:
    name: str
    cfg: CameraConfig
    height: int
    width: int
    total_frames: int | None
    state: str = "starting"
    reason: str = ""


def _ingest_entry(camera: str, cfg: CameraConfig, handle: Any, events: Any, stop: Any,
                  log_level: str | None, parent_pid: int) -> None:
    """Spawned ingest process: logging, Ctrl-C left to the supervisor, exit with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_process_name(f"cs-ingest-{camera}")
    from engines.log import setup_logging
    from pipeline.ingest import run_ingest
    from pipeline.secrets import register_secrets_of_camera

    register_secrets_of_camera(cfg)
    setup_logging(log_level)
    _watch_parent(parent_pid, stop)
    run_ingest(camera, cfg, handle, events, stop)


def _stage_entry(target: str, args: StageArgs, *extra: Any) -> None:
    """Spawned stage process: sets the stop event if the supervisor dies, then runs the stage."""
    import importlib

    set_process_name(f"cs-{target}")
    _watch_parent(args.parent_pid, None)
    importlib.import_module(f"pipeline.stages.{target}").main(args, *extra)


def _watch_parent(parent_pid: int, stop: Any) -> None:
    """Exit soon after the supervisor is gone (SIGKILL leaves children orphaned otherwise)."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                if stop is not None:
                    stop.set()
                    time.sleep(2.0)
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass
class Supervisor:
    """Runs one ``AppConfig`` until its sources end or a signal arrives; ``run()`` -> exit code."""

    cfg: AppConfig
    log_level: str | None = None
    console: bool = True
    status_stream: Any = None  # default sys.stderr
    log: Any = field(init=False)

    def __post_init__(self) -> None:
        self.log = get_logger("supervisor")
        self.ctx = mp.get_context("spawn")
        self.prefix = run_prefix()
        self.rings: list[FrameRing] = []
        self.pool: BatchPool | None = None
        self.procs: dict[str, _Proc] = {}
        self.cams: list[_CamInfo] = []
        self.segments: list[str] = []
        self._signal: int | None = None
        self.metrics: PipelineMetrics | None = None
        self.engine: dict[str, Any] = {}
        self.exit_reason = ""
        self.last_snapshot: Snapshot | None = None
        self.status_stream = self.status_stream or sys.stderr

    # ------------------------------------------------------------------ start
    def _plan(self) -> None:
        cfg = self.cfg
        self.choice = inference_stage.choose_model(cfg)
        enabled = [(n, c) for n, c in cfg.cameras.items() if c.enabled]
        if not enabled:
            raise ConfigError(cfg.source_file, "cameras", "every camera is disabled "
                                                          "(enabled: false)")
        rt = cfg.runtime
        for name, cam in enabled:
            probed = probe_video(cam)
            if probed is not None:
                h, w, n = probed.height, probed.width, probed.frames
                total = None if (cam.loop or cam.is_live) else n
            else:
                h, w, total = rt.max_frame_height, rt.max_frame_width, None
            self.cams.append(_CamInfo(name, cam, h, w, total))
        need = sum(FrameRing.nbytes(rt.frame_slots, c.height, c.width) for c in self.cams)
        check_shm_space(need, f"{len(self.cams)} camera ring(s) of {rt.frame_slots} slots")

    def _start(self) -> None:
        self._plan()
        cfg, rt = self.cfg, self.cfg.runtime
        if self.choice.fallback_reason or self.choice.random_init:
            msg = (f"model: {self.choice.label}"
                   + (f" -- {self.choice.fallback_reason}" if self.choice.fallback_reason else ""))
            print(f"crowdstream: WARNING {msg}", file=self.status_stream, flush=True)
            self.log.warning("random init model", model=self.choice.random_init,
                             reason=self.choice.fallback_reason or "model.random_init")
        for i, c in enumerate(self.cams):
            name = f"{self.prefix}r{i}"
            self.segments.append(name)
            self.rings.append(FrameRing.create(name, rt.frame_slots, c.height, c.width,
                                               c.cfg.effective_policy))
            self.log.info("camera", camera=c.name, url=c.cfg.url, policy=c.cfg.effective_policy,
                          ring=f"{rt.frame_slots}x{c.width}x{c.height}")
        pool_name = f"{self.prefix}batches"
        self.segments.append(pool_name)
        self.pool_handle = BatchPool.prepare(pool_name, rt.batch_slots)
        self.stop_ingest = StopFlag(self.ctx)
        self.stop_stages = StopFlag(self.ctx)
        # one events queue per ingest process and one status queue per post process, made fresh
        # at each spawn: a process SIGKILLed in the middle of a queue operation can leave a
        # queue's lock taken or half a message in its pipe, and that must not reach the others
        self.inbox: queue.Queue[CameraStatus] = queue.Queue()
        self.event_queues: dict[str, Any] = {}
        self.readers: list[threading.Thread] = []
        self.status_q: Any = None
        self.info_q: Any = self.ctx.Queue()
        self.pool_ready = StopFlag(self.ctx)
        self.args = StageArgs(cfg, [c.name for c in self.cams], [r.handle() for r in self.rings],
                              self.pool_handle, self.stop_stages, self.log_level, os.getpid())
        if cfg.metrics.port is not None:
            try:
                self.metrics = PipelineMetrics(self.args.cameras, cfg.metrics.port,
                                               cfg.metrics.host)
            except OSError as e:
                raise ConfigError(cfg.source_file, "metrics.port",
                                  f"cannot serve metrics on {cfg.metrics.host}:"
                                  f"{cfg.metrics.port}: {e}") from None
        else:
            self.metrics = PipelineMetrics(self.args.cameras, None)
        # the engine decides the window, so inference starts first and the pool is sized to it
        self._spawn("inference")
        info = self._wait_engine()
        self.engine = info
        window = tuple(info["window"])
        max_batch = min(cfg.model.batch, int(info["max_batch"]))
        check_shm_space(BatchPool.nbytes(rt.batch_slots, max_batch, window, info["block_size"]),
                        f"the batch pool ({rt.batch_slots} x {max_batch} tiles)")
        self.pool = BatchPool.create_from(self.pool_handle, max_batch, window, info["block_size"])
        self.pool_ready.set()
        print(f"crowdstream: engine {info['engine_id']} "
              f"({info['description'].get('backend')}, {info['description'].get('device')}, "
              f"window {window[1]}x{window[0]}, batch {max_batch}), model {self.choice.label}",
              file=self.status_stream, flush=True)
        self._spawn("tile")
        self._spawn("post")
        for c in self.cams:
            self._spawn(f"ingest:{c.name}")

    def _wait_engine(self) -> dict[str, Any]:
        deadline = time.monotonic() + ENGINE_LOAD_TIMEOUT_S
        p = self.procs["inference"]
        while time.monotonic() < deadline:
            if self._signal is not None:
                raise PipelineError("interrupted while the engine was loading")
            try:
                info = self.info_q.get(timeout=POLL_S)
            except queue.Empty:
                if not p.proc.is_alive():
                    raise PipelineError(f"the inference process exited with code "
                                        f"{p.proc.exitcode} while loading the engine") from None
                continue
            if "error" in info:
                raise PipelineError(f"cannot load the model ({self.choice.label}): "
                                    f"{info['error']}")
            return info
        raise PipelineError(f"the engine did not load within {ENGINE_LOAD_TIMEOUT_S:.0f} s")

    def _spawn(self, key: str) -> None:
        p = self.procs.get(key)
        if p is None:
            p = self.procs[key] = _Proc(key.split(":")[0], key)
        if p.stage == "ingest":
            ci = next(i for i, c in enumerate(self.cams) if f"ingest:{c.name}" == key)
            c = self.cams[ci]
            events = self.ctx.Queue()
            self.event_queues[c.name] = events
            reader = threading.Thread(target=self._read_events, args=(events,), daemon=True,
                                      name=f"events-{c.name}")
            reader.start()
            self.readers.append(reader)
            target, args = _ingest_entry, (c.name, c.cfg, self.rings[ci].handle(), events,
                                           self.stop_ingest, self.log_level, os.getpid())
        elif p.stage == "inference":
            # only the first inference process reports its engine; a restarted one must not
            # write into a queue nobody reads any more
            target, args = _stage_entry, ("inference", self.args, self.choice,
                                          None if self.engine else self.info_q, self.pool_ready)
        elif p.stage == "post":
            self.status_q = self.ctx.Queue()
            target, args = _stage_entry, ("post", self.args, self.engine["engine_id"],
                                          self.status_q)
        else:
            target, args = _stage_entry, ("tile", self.args)
        p.proc = self.ctx.Process(target=target, args=args, name=f"crowdstream-{key}",
                                  daemon=False)
        p.proc.start()
        p.started = time.monotonic()
        p.restart_at = None
        self.log.info("spawned", stage=key, pid=p.proc.pid)

    # ------------------------------------------------------------------ watch
    def _backoff(self, p: _Proc) -> float:
        rt = self.cfg.runtime
        return min(rt.restart_backoff_cap_s, rt.restart_backoff_s * 2 ** max(0, p.streak - 1))

    def _crashed(self, p: _Proc) -> None:
        code = p.proc.exitcode
        if time.monotonic() - p.started > 60.0:
            p.streak = 0  # it had been running fine: start the backoff over
        p.crashes += 1
        p.streak += 1
        delay = self._backoff(p)
        self.log.error("stage crashed", stage=p.key, pid=p.proc.pid, exitcode=code,
                       crashes=p.crashes, restart_in_s=round(delay, 2))
        p.restart_at = time.monotonic() + delay
        p.proc.join(0)
        self._break_stale_locks(p.key)

    def _break_stale_locks(self, who: str) -> None:
        """A child killed inside a ring's or the pool's critical section leaves its lock taken
        forever; give such locks back before anyone (this loop included) blocks on them."""
        for c, r in zip(self.cams, self.rings, strict=True):
            if r.break_stale_lock():
                self.log.warning("broke stale lock", ring=c.name, dead=who)
        if self.pool is not None and self.pool.break_stale_lock():
            self.log.warning("broke stale lock", ring="batches", dead=who)

    def _check_procs(self) -> None:
        now = time.monotonic()
        stopping = self.stop_stages.is_set()
        chain_restart = False
        for p in list(self.procs.values()):
            if p.done:
                continue
            if p.proc is not None and p.proc.is_alive():
                continue
            if p.restart_at is None:
                if p.stage == "ingest":
                    ci = next(i for i, c in enumerate(self.cams) if f"ingest:{c.name}" == p.key)
                    ring = self.rings[ci]
                    if ring.ended or self.stop_ingest.is_set():
                        p.done = True  # the source ended (file finished, offline, stop)
                        p.proc.join(0)
                        continue
                    self._crashed(p)
                    ring.recover_writer()
                    continue
                if stopping:
                    p.done = True
                    continue
                self._crashed(p)
                if p.stage == "inference":
                    n = self.pool.requeue_inference() if self.pool else 0
                    self.log.warning("batches requeued", stage="inference", batches=n)
                else:
                    chain_restart = True
            elif now >= p.restart_at and not stopping:
                if p.stage == "ingest" and self.stop_ingest.is_set():
                    p.done = True
                    continue
                self.log.info("restarting", stage=p.key, crashes=p.crashes)
                self._spawn(p.key)
        if chain_restart:
            self._restart_chain()

    def _restart_chain(self) -> None:
        """A tile or post process died: stop tile/inference/post, give back what they held, and
        start them again (after the dead one's backoff)."""
        chain = [self.procs[k] for k in ("tile", "inference", "post")]
        for p in chain:
            if p.proc is not None and p.proc.is_alive():
                p.proc.kill()
                p.proc.join(5)
        assert self.pool is not None
        self._break_stale_locks("tile/inference/post")  # killed mid-critical-section, maybe
        self.pool.reset()
        lost = sum(r.recover_readers() for r in self.rings)
        self.log.warning("stage chain restarted", lost_frames=lost)
        delay = max(self._backoff(p) for p in chain if p.streak)
        for p in chain:
            p.restart_at = time.monotonic() + delay

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
            self.status_q.put(st)

    def _snapshot(self) -> Snapshot:
        cams = {c.name: CameraSnapshot(r.stats(), r.latency_samples(), c.state, c.reason,
                                       c.total_frames) for c, r in zip(self.cams, self.rings,
                                                                       strict=True)}
        up = {}
        for p in self.procs.values():
            alive = p.proc is not None and p.proc.is_alive()
            up[p.stage] = up.get(p.stage, True) and alive if p.stage == "ingest" else alive
        restarts: dict[str, int] = {}
        for p in self.procs.values():
            restarts[p.stage] = restarts.get(p.stage, 0) + p.crashes
        return Snapshot(time.time(), cams, self.pool.stats() if self.pool else {}, restarts, up)

    def _drained(self, snap: Snapshot) -> bool:
        """Every frame written so far has been counted (or counted as lost/dropped)."""
        for c in snap.cameras.values():
            r = c.ring
            if r["depth"] or r["emitted"] + r["lost"] < r["tiled"]:
                return False
        return not (snap.pool and (snap.pool["queued_infer"] or snap.pool["queued_post"]))

    def _all_ended(self, snap: Snapshot) -> bool:
        return all(c.ring["ended"] and c.ring["eos_seen"] for c in snap.cameras.values())

    # ------------------------------------------------------------------ console
    def _console(self, snap: Snapshot, final: bool = False) -> None:
        assert self.metrics is not None
        self.metrics.track_progress(snap)
        if not self.console:
            return
        line = self.metrics.status_line()
        bar = self.metrics.progress_line()
        text = f"{bar} {line}" if bar else line
        out = self.status_stream
        if getattr(out, "isatty", lambda: False)():
            cols = 160
            out.write("\r" + text[:cols].ljust(cols) + ("\n" if final else ""))
        else:
            out.write(text + "\n")
        out.flush()

    # ------------------------------------------------------------------ run
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:
            self.log.warning("second signal: stopping now", signal=signum)
            self.cfg.runtime.drain_timeout_s = 0.0
        self._signal = signum

    def run(self) -> int:
        """Start, supervise until the sources end or SIGINT/SIGTERM, clean up. Exit code: 0 when
        every source finished (or a signal stopped a clean drain), 1 when a camera ended offline,
        2 for configuration errors (raised as ``ConfigError``)."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start()
            return self._loop()
        finally:
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)

    def _loop(self) -> int:
        assert self.metrics is not None
        every = self.cfg.metrics.status_every_s
        next_status = time.monotonic() + min(every, 1.0)
        drain_deadline: float | None = None
        while True:
            time.sleep(POLL_S)
            self._relay_events()
            self._check_procs()
            snap = self._snapshot()
            self.metrics.update(snap)
            if time.monotonic() >= next_status:
                self._console(snap)
                next_status = time.monotonic() + every
            if self._signal is not None and drain_deadline is None:
                self.log.info("stopping", signal=signal.Signals(self._signal).name,
                              drain_timeout_s=self.cfg.runtime.drain_timeout_s)
                self.stop_ingest.set()
                drain_deadline = time.monotonic() + self.cfg.runtime.drain_timeout_s
            if drain_deadline is not None:
                ingest_gone = all(p.done or not p.proc.is_alive() for p in self.procs.values()
                                  if p.stage == "ingest")
                if ingest_gone and self._drained(snap):
                    self.exit_reason = "stopped by signal, drained"
                    break
                if time.monotonic() >= drain_deadline:
                    self.exit_reason = "stopped by signal, drain timed out"
                    self.log.warning("drain timed out", pending=str({
                        k: v.ring["tiled"] - v.ring["emitted"] for k, v in snap.cameras.items()}))
                    break
            elif self._all_ended(snap) and self._drained(snap):
                self.exit_reason = "all sources ended"
                break
        self._relay_events()
        snap = self._snapshot()
        self.last_snapshot = snap
        self.metrics.update(snap)
        self._console(snap, final=True)
        # a camera that went offline because we stopped it is not a failure
        bad = [] if self._signal is not None else [c.name for c in self.cams
                                                   if c.state == "offline"]
        summary = ", ".join(f"{k}: {v.ring['emitted']} counted, {v.ring['drops']} dropped, "
                            f"{v.ring['lost']} lost" for k, v in snap.cameras.items())
        print(f"crowdstream: {self.exit_reason}; {summary}"
              + (f"; offline: {', '.join(bad)}" if bad else ""), file=self.status_stream,
              flush=True)
        return 1 if bad else 0

    def _shutdown(self) -> None:
        """Stop every process (politely, then by force) and unlink every segment."""
        if hasattr(self, "stop_ingest"):
            self.stop_ingest.set()
            self.stop_stages.set()
            time.sleep(0.05)
            self._relay_events_quiet()
            deadline = time.monotonic() + max(2.0, min(10.0, self.cfg.runtime.drain_timeout_s))
            for p in self.procs.values():
                if p.proc is not None:
                    p.proc.join(max(0.0, deadline - time.monotonic()))
            for p in self.procs.values():
                if p.proc is not None and p.proc.is_alive():
                    self.log.warning("terminating", stage=p.key, pid=p.proc.pid)
                    p.proc.terminate()
                    p.proc.join(2.0)
                    if p.proc.is_alive():
                        p.proc.kill()
                        p.proc.join(2.0)
            for q in self.event_queues.values():
                q.put(None)  # ends its reader thread (unless a killed writer broke the queue)
            for t in self.readers:
                t.join(0.5)
            for q in [*self.event_queues.values(), self.status_q, self.info_q]:
                if q is None:
                    continue
                q.cancel_join_thread()
                q.close()
        for r in self.rings:
            r.close()
            r.unlink()
        if self.pool is not None:
            self.pool.close()
            self.pool.unlink()
        # a segment created but never wrapped (a failure mid-start) is unlinked by name
        for name in self.segments:
            try:
                from multiprocessing import shared_memory

                shared_memory.SharedMemory(name=name).unlink()
            except (FileNotFoundError, OSError):
                pass
        if self.metrics is not None:
            self.metrics.close()

    def _relay_events_quiet(self) -> None:
        try:
            self._relay_events()
        except (OSError, ValueError):
            pass


def run(cfg: AppConfig, **kw: Any) -> int:
    """Convenience: ``Supervisor(cfg, **kw).run()``."""
    return Supervisor(cfg, **kw).run()


__all__ = ["PipelineError", "Supervisor", "run"]
