"""Helpers for ingest tests: run ``run_ingest`` in real spawned processes and watch its output.

Example::

    with IngestRun() as run:
        cam = run.add("cam0", CameraConfig(url="clip.mp4"), max_hw=(240, 320))
        run.wait_state("cam0", "finished", timeout=10)
        assert [m.frame_index for m in cam.metas] == list(range(50))
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pipeline.config import CameraConfig, ReconnectConfig
from pipeline.events import CameraStatus
from pipeline.process import ChildSpec, StopFlag, spawn_child
from pipeline.shm import EndOfStream, FrameMeta, FrameRing


def fast_reconnect(**kw: Any) -> ReconnectConfig:
    """Short backoffs and timeouts so reconnect tests take seconds, not minutes."""
    base: dict[str, Any] = dict(initial_s=0.1, cap_s=0.5, multiplier=2.0, stall_timeout_s=2.0,
                                open_timeout_s=2.0)
    base.update(kw)
    return ReconnectConfig(**base)


# The generated test clips are tiny (320x240, ~13 KB/s): reading FFmpeg's live default of 32 KB
# before the first frame would take over a second per connection, so tests probe less.
FAST_PROBE = {"probesize": "2048"}


@dataclass
class Received:
    """Frames one camera's consumer thread took out of its ring."""

    metas: list[FrameMeta] = field(default_factory=list)
    recv_ts: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # blake2b of each frame's bytes
    end: EndOfStream | None = None

    def since(self, t: float) -> list[FrameMeta]:
        return [m for m, r in zip(self.metas, self.recv_ts, strict=True) if r >= t]

    def max_gap(self, t0: float, t1: float) -> float:
        """Longest interval without a frame between wall-clock times t0 and t1."""
        ts = [t0] + [r for r in self.recv_ts if t0 <= r <= t1] + [t1]
        return max(b - a for a, b in zip(ts, ts[1:], strict=False))


class IngestRun:
    """Spawned ingest processes, their rings, a consumer thread per ring and the status events."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.events: Any = self.ctx.Queue()
        self.stop = StopFlag(self.ctx)
        self.rings: dict[str, FrameRing] = {}
        self.procs: dict[str, Any] = {}
        self.received: dict[str, Received] = {}
        self.statuses: list[CameraStatus] = []
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._lock = threading.Lock()
        t = threading.Thread(target=self._pump_events, daemon=True)
        t.start()
        self._threads.append(t)

    def add(self, name: str, cfg: CameraConfig, max_hw: tuple[int, int] = (240, 320),
            slots: int = 4, policy: str | None = None, consume: bool = True) -> Received:
        ring = FrameRing.create(f"cstest_{os.getpid()}_{name}_{os.urandom(3).hex()}", slots,
                                max_hw[0], max_hw[1], policy or cfg.effective_policy)
        self.rings[name] = ring
        rec = self.received[name] = Received()
        p = spawn_child(self.ctx, ChildSpec(f"ingest-{name}", "pipeline.ingest:run_ingest",
                                            self.stop), name, cfg, ring.handle(), self.events,
                        self.stop)
        self.procs[name] = p
        if consume:
            t = threading.Thread(target=self._consume, args=(ring, rec), daemon=True)
            t.start()
            self._threads.append(t)
        return rec

    def _consume(self, ring: FrameRing, rec: Received) -> None:
        while not self._done.is_set():
            got = ring.get(timeout=0.1)
            if got is None:
                continue
            if isinstance(got, EndOfStream):
                rec.end = got
                return
            slot, meta, view = got
            mean = float(view.mean())
            digest = hashlib.blake2b(view.tobytes(), digest_size=16).hexdigest()
            ring.release(slot)
            with self._lock:
                rec.metas.append(meta)
                rec.means.append(mean)
                rec.digests.append(digest)
                rec.recv_ts.append(time.time())

    def _pump_events(self) -> None:
        while not self._done.is_set():
            try:
                st = self.events.get(timeout=0.1)
            except Exception:  # queue.Empty, or the queue closed at teardown
                continue
            with self._lock:
                self.statuses.append(st)

    def states(self, name: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(s.state, s.reason) for s in self.statuses if s.camera == name]

    def wait_state(self, name: str, state: str, timeout: float, after: float = 0.0) -> CameraStatus:
        """The first status ``state`` of camera ``name`` stamped after ``after``; fails on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for s in self.statuses:
                    if s.camera == name and s.state == state and s.ts >= after:
                        return s
            time.sleep(0.02)
        raise AssertionError(f"camera {name!r} did not reach {state!r} within {timeout} s; "
                             f"states so far: {self.states(name)}")

    def wait_frames(self, name: str, n: int, timeout: float, after: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received[name].since(after)) >= n:
                return
            time.sleep(0.02)
        raise AssertionError(f"camera {name!r}: fewer than {n} frames after {after} within "
                             f"{timeout} s (got {len(self.received[name].since(after))}); "
                             f"states: {self.states(name)}")

    def join(self, name: str, timeout: float) -> int | None:
        p = self.procs[name]
        p.join(timeout)
        return p.exitcode

    def close(self) -> None:
        self.stop.set()
        for p in self.procs.values():
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)
        self._done.set()
        for t in self._threads:
            t.join(2)
        for ring in self.rings.values():
            ring.close()
            ring.unlink()
        self.events.close()
        self.events.join_thread()

    def __enter__(self) -> IngestRun:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
