"""Ingest: one process per source, decoding with PyAV into a shared-memory frame ring.

``run_ingest`` is the process target the supervisor spawns for each camera (through
``pipeline.process.spawn_child``: name, Ctrl-C, logging and the parent watch are set up there). It opens the
source (:mod:`engines.video`), decodes with frame+slice threading, optionally samples to
``cfg.fps`` by PTS and paces files in real time, and writes BGR uint8 frames with their source
PTS, a monotonic per-camera frame index and the capture wall-clock time into the camera's ring:
a slot is reserved and libswscale converts straight into it (:mod:`pipeline.frame_convert`),
so a frame is never copied after conversion.

Every state change is sent as a :class:`pipeline.events.CameraStatus` on ``events``:
``starting`` -> ``online`` -> (``reconnecting`` -> ``online``)* -> ``finished`` | ``offline``.
Live sources are reopened with exponential backoff; PyAV's decode loop simply *ends* when an
RTSP server dies, so an end of stream on a live source is a drop, not a finish. A stall
watchdog (no frame for ``stall_timeout_s``) and the socket read timeout catch hung servers.
A file that is missing, not a video, truncated or corrupt ends that camera ``offline`` with a
reason naming the file; it never affects other cameras (they are separate processes).

This module must not import torch or CUDA: decode processes stay small and fork/spawn fast.

Example::

    ring = FrameRing.create("cam0", slots=8, max_height=1080, max_width=1920, policy="latest")
    stop = StopFlag(ctx)
    spawn_child(ctx, ChildSpec("ingest-cam0", "pipeline.ingest:run_ingest", stop),
                "cam0", cfg.cameras["cam0"], ring.handle(), events, stop)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from engines.log import get_logger
from engines.redact import redact_url
from engines.video import (
    DecodeStats,
    FpsSampler,
    Pacer,
    SourceError,
    StreamStalled,
    frame_duration_s,
    iter_video_frames,
    open_source,
    source_kind,
    truncation,
)
from pipeline.config import CameraConfig
from pipeline.events import STOP_REASON, CameraState, CameraStatus
from pipeline.frame_convert import BgrWriter
from pipeline.process import StopFlag
from pipeline.shm import FrameMeta, FrameRing, FrameRingHandle

if TYPE_CHECKING:
    import multiprocessing.queues

    import av.container

PUT_WAIT_S = 0.2  # a blocked lossless put re-checks the stop flag this often


class _Stopped(Exception):
    """The stop flag was set while waiting."""


class Ingest:
    """The per-camera decode/reconnect state machine behind :func:`run_ingest`.

    Kept as a class so tests and benchmarks can drive it in-process; ``emit`` receives each
    :class:`CameraStatus`.

    Example::

        Ingest("cam0", cfg, ring, events.put, stop).run()
    """

    def __init__(self, camera: str, cfg: CameraConfig, ring: FrameRing,
                 emit: Any, stop: StopFlag) -> None:
        self.camera = camera
        self.cfg = cfg
        self.ring = ring
        self.emit = emit
        self.stop = stop
        self.kind = source_kind(cfg.url)
        self.live = self.kind != "file"
        self.shown_url = redact_url(cfg.url)  # never log a camera password
        self.policy = getattr(ring, "policy", cfg.effective_policy)
        self.log = get_logger("ingest", camera=camera)
        self.state: CameraState | None = None
        self.reason = ""
        self.frame_index = 0  # every decoded frame, monotonic across reconnects and loops
        self.skip_through = -1  # a restarted file source re-decodes, but skips, frames up to here
        self.frames_out = 0  # frames written to the ring
        self.decode_errors = 0
        self.sampler = FpsSampler(cfg.fps)
        self.pacer = Pacer()
        self.convert = BgrWriter(camera=camera)  # BGR24 straight into the ring's slot
        self._pts_offset = 0.0  # added to a looped file's PTS so time keeps moving forward
        self._last_pts: float | None = None
        self._progress = time.monotonic()
        self._ended = False
        self.session = 0  # this opening of the source (FrameMeta.session): new on each open

    # -- state -------------------------------------------------------------------------------

    def set_state(self, state: CameraState, reason: str) -> None:
        """Record and announce a state change (repeats of the same state are not re-sent)."""
        if state == self.state:
            return
        self.state, self.reason = state, reason
        trouble = state == "reconnecting" or (state == "offline" and reason != STOP_REASON)
        log = self.log.warning if trouble else self.log.info
        log("state", state=state, reason=reason, frames=self.frames_out)
        self.emit(CameraStatus(self.camera, state, reason, time.time()))

    def _end(self, reason: str) -> None:
        """Tell the consumer no more frames will come (once)."""
        if not self._ended:
            self._ended = True
            self.ring.put_end(reason)

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until the source finishes, goes offline, or ``stop`` is set."""
        cfg, rc = self.cfg, self.cfg.reconnect
        if not cfg.enabled:
            self._give_up("disabled in the config (enabled: false)")
            return
        self.set_state("starting", f"opening {self.shown_url}")
        failures = 0  # consecutive failures since the camera was last online
        try:
            while not self.stop.is_set():
                if failures:
                    if rc.max_attempts is not None and failures > rc.max_attempts:
                        self._give_up(f"gave up after {rc.max_attempts} reconnect attempts: "
                                      f"{self.reason}")
                        return
                    delay = min(rc.cap_s, rc.initial_s * rc.multiplier ** (failures - 1))
                    self.log.info("reconnect_wait", attempt=failures, delay_s=round(delay, 3))
                    if self.stop.wait(delay):
                        break
                try:
                    container = open_source(cfg)
                except SourceError as e:
                    if not e.retry:
                        self._give_up(str(e))
                        return
                    failures += 1
                    self._drop(str(e), failures)
                    continue
                try:
                    outcome = self._session(container)
                finally:
                    container.close()
                if outcome == "online_then_dropped":
                    failures = 1
                elif outcome == "dropped":
                    failures += 1
                elif outcome in ("finished", "offline"):
                    return
                # "loop": reopen the file at once
        except _Stopped:
            pass
        self._end(STOP_REASON)
        self.set_state("offline", STOP_REASON)  # the run's stop: not a failure

    def _give_up(self, reason: str) -> None:
        # the stream ends before the state is announced: a consumer that gets an end state finds
        # the stream ended (and a crash's ``offline``, which does not end it, tells apart)
        self._end(f"offline: {reason}")
        self.set_state("offline", reason)

    def _drop(self, reason: str, attempt: int) -> None:
        if self.state == "reconnecting":
            self.reason = reason
            self.log.warning("reconnect_failed", attempt=attempt, reason=reason)
        else:
            self.set_state("reconnecting", reason)

    def _session(self, container: av.container.InputContainer) -> str:
        """Decode one opened container. Returns how it ended: ``dropped`` (live, no frame),
        ``online_then_dropped``, ``loop``, ``finished`` or ``offline``."""
        import av

        stats = DecodeStats()
        fdur = frame_duration_s(container)
        got_frame = False
        # a new id per opening (reconnect, a file's loop, a restarted process): the motion gate
        # recounts the whole frame on the first frame of a session it sees
        self.session = time.time_ns()
        stall_s = self.cfg.reconnect.stall_timeout_s if self.live else None
        self._progress = time.monotonic()
        try:
            for frame in iter_video_frames(container, stall_timeout_s=stall_s, stats=stats,
                                           progress=lambda: self._progress):
                if self.stop.is_set():
                    raise _Stopped
                capture_ts = time.time()
                if not got_frame:
                    got_frame = True
                    self.set_state("online", f"first frame from {self.shown_url}")
                self._deliver(frame, fdur, capture_ts)
        except _Stopped:
            raise
        except (StreamStalled, av.error.FFmpegError, OSError) as e:
            self.decode_errors += stats.decode_errors
            reason = _describe(e, self.cfg.reconnect.stall_timeout_s)
            if self.live:
                self._drop(reason, 0)
                return "online_then_dropped" if got_frame else "dropped"
            self._give_up(f"corrupt file after {stats.frames} frames ({reason}): {self.shown_url}")
            return "offline"
        except ValueError as e:  # e.g. a frame larger than the ring's slots
            self._give_up(f"{e} (source {self.shown_url})")
            return "offline"
        self.decode_errors += stats.decode_errors
        if self.stop.is_set():
            raise _Stopped
        if self.live:
            # PyAV ends the decode loop without an exception when the server goes away
            self._drop("end of stream (connection closed by the source)", 0)
            return "online_then_dropped" if got_frame else "dropped"
        problem = self._file_problem(container, stats)
        if problem:
            self._give_up(f"{problem}: {self.shown_url}")
            return "offline"
        if self.cfg.loop:
            self._pts_offset = (self._last_pts if self._last_pts is not None else 0.0) + fdur
            self.log.info("loop", frames=self.frames_out)
            return "loop"
        self._end("finished")  # before the state, as in _give_up
        self.set_state("finished", f"end of file after {self.frame_index} frames")
        return "finished"

    @staticmethod
    def _file_problem(container: av.container.InputContainer, stats: DecodeStats) -> str:
        """Why a file pass that ended without an exception was nevertheless not clean."""
        if stats.frames == 0:
            return ("not a video file (no frame could be decoded"
                    + (f"; FFmpeg: {stats.last_error})" if stats.last_error else ")"))
        cut = truncation(container, stats)
        if cut:
            return cut
        if stats.decode_errors:
            return (f"corrupt file: {stats.decode_errors} packets could not be decoded "
                    f"(FFmpeg: {stats.last_error})")
        return ""

    def resume_after(self, last_index: int, published_index: int = -1) -> None:
        """Carry on after a restart: the ring remembers the last frame index written
        (``last_index``, a restart within the run), Redis the last one published before this
        worker started (``published_index``, ``runtime.resume``: a restarted or re-sharded
        worker).

        A live source simply continues the numbering; a file is decoded again from the start and
        the frames already delivered are skipped, so a lossless run still counts each frame once.
        A looping file taken over from Redis continues the numbering from its start instead of
        decoding every loop already counted.
        """
        if published_index >= 0:
            if self.live or self.cfg.loop:
                self.frame_index = published_index + 1
            else:
                self.skip_through = published_index
        if last_index < 0:
            return
        if self.live:
            self.frame_index = last_index + 1
        else:
            self.skip_through = max(self.skip_through, last_index)

    def _deliver(self, frame: Any, fdur: float, capture_ts: float) -> None:
        """Sample, pace, convert and queue one decoded frame."""
        index = self.frame_index
        self.frame_index += 1
        t = frame.time
        if t is None:  # RTSP's first frame often has no PTS before the first RTCP report
            t = (self._last_pts - self._pts_offset + fdur) if self._last_pts is not None else 0.0
        pts = t + self._pts_offset
        self._last_pts = pts
        if index <= self.skip_through or not self.sampler.keep(pts):
            return
        if self.cfg.realtime and not self.live:
            wait = self.pacer.delay(pts)
            if wait > 0 and self.stop.wait(wait):
                raise _Stopped
            capture_ts = time.time()  # a paced file frame is "captured" when released
        h, w = frame.height, frame.width
        # Write in place: reserve a slot and let swscale convert straight into it (no copy).
        # lossless waits for a free slot for as long as it takes; latest only waits while
        # readers hold every slot (otherwise the ring reclaims the oldest unread frame), and
        # a frame refused after that wait is counted as dropped by the ring.
        while (got := self.ring.reserve(h, w, timeout=PUT_WAIT_S)) is None:
            if self.stop.is_set():
                raise _Stopped
            if self.policy != "lossless":
                return
        slot, view = got
        try:
            self.convert(frame, view)
        except BaseException:
            self.ring.abort(slot)
            raise
        self.ring.commit(slot, FrameMeta(self.camera, index, pts, capture_ts, h, w, self.session))
        self._progress = time.monotonic()  # waiting on a full ring is not a stall
        self.frames_out += 1


def _describe(e: BaseException, read_timeout_s: float) -> str:
    import av

    if isinstance(e, StreamStalled):
        return f"stalled: {e}"
    # PyAV's own read timeout interrupts FFmpeg and surfaces as ExitError; the RTSP socket
    # timeout as TimeoutError
    if isinstance(e, TimeoutError | av.error.ExitError):
        return f"read timeout: no data for {read_timeout_s:g} s"
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return f"{type(e).__name__}: {msg}"


def run_ingest(camera: str, cfg: CameraConfig, ring: FrameRing | FrameRingHandle,
               events: multiprocessing.queues.Queue[Any], stop: StopFlag,
               published_index: int = -1) -> None:
    """Process target: ingest one camera into ``ring`` until it ends or ``stop`` is set.

    ``ring`` is the camera's :class:`FrameRing`, or its ``handle()`` when this runs in a spawned
    process (the child attaches and detaches). Emits a :class:`CameraStatus` on ``events`` for
    every state change, and ends the ring with ``ring.put_end(reason)`` when no more frames
    will come. ``published_index`` (>= 0 with ``runtime.resume``) is the camera's last frame
    index already in Redis when the worker started: numbering continues after it.

    ``stop`` is checked between frames, during backoff waits and while a lossless put waits for
    a slot; a read that hangs inside FFmpeg returns at the latest after
    ``reconnect.stall_timeout_s`` (``open_timeout_s`` while connecting).

    Example::

        ctx = multiprocessing.get_context("spawn")
        stop = StopFlag(ctx)
        spawn_child(ctx, ChildSpec("ingest-lobby", "pipeline.ingest:run_ingest", stop),
                    "lobby", cam_cfg, ring.handle(), events, stop)
    """
    # a spawned child receives the ring's handle (its lock and semaphores travel only through
    # process creation) and attaches; an in-process caller may pass the ring itself
    attached = FrameRing.attach(ring) if isinstance(ring, FrameRingHandle) else None
    ing = Ingest(camera, cfg, attached or ring, events.put, stop)
    ing.resume_after(ing.ring.last_frame_index, published_index)
    try:
        ing.run()
    except Exception as e:
        # an unexpected error still leaves its reason behind; the ring is NOT ended, so the
        # supervisor sees a crash and restarts this process with its backoff
        ing.set_state("offline", f"ingest crashed: {type(e).__name__}: {e}")
        raise
    finally:
        if attached is not None:
            attached.close()


__all__ = ["Ingest", "run_ingest"]
