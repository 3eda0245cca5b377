"""Tile stage: frames from every camera ring -> model-size windows -> shared-memory batches.

Uses ``engines.tiling.TileLayout`` (the one tiling implementation) and cuts each window straight
into a batch slot, normalised to float32 RGB in [0, 1]; tiles of the cameras that share a model
share a batch (one ``Tiler`` per model's pool, each frame resized by its own model's rule). A
batch is submitted when full, or ``model.batch_timeout_ms`` after its first tile when no more
frames are waiting (per pool: one model's partial batch never waits for another's). A camera
with ``motion_gate.enabled`` asks its ``pipeline.motion.MotionGate`` which tiles changed; the
others get a descriptor row marked reused and no tile (nothing to cut, nothing to run). Never
imports torch: this process stays free of CUDA.

Example (what the supervisor does)::

    spawn_child(ctx, ChildSpec("tile", "pipeline.stages.tile:main", stop), stage_args)
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from engines.log import get_logger
from engines.predict import ResizeRule, resize_frame
from engines.tiling import TileLayout
from pipeline.events import EndOfStream
from pipeline.motion import MotionGate
from pipeline.shm import BatchPool, FrameMeta, FrameRing
from pipeline.stages.common import StageArgs


class Tiler:
    """Packs frames' tiles into batch slots of a ``BatchPool`` (usable in-process too)."""

    def __init__(self, pool: BatchPool, overlap: float, batch_timeout_s: float,
                 stop: object | None = None) -> None:
        self.pool = pool
        self.overlap = overlap
        self.batch_timeout_s = batch_timeout_s
        self.stop = stop
        self.slot: int | None = None
        self.n = 0  # descriptor rows in the current batch
        self.k = 0  # tiles to run in it (rows of tiles()/outputs())
        self.t_first = 0.0
        self.last_frame = (0, 0)  # the last frame added: (tiles, tiles reused)

    def layout(self, h: int, w: int) -> TileLayout:
        """The windows of an ``h x w`` frame (from the one memoised ``TileLayout.plan``)."""
        return TileLayout.plan(h, w, self.pool.window, self.pool.block, self.overlap)

    def _acquire(self) -> bool:
        while self.slot is None:
            self.slot = self.pool.acquire(timeout=0.2)
            if self.stop is not None and self.stop.is_set():  # type: ignore[attr-defined]
                return self.slot is not None
        return True

    def add(self, cam: int, fslot: int, seq: int, meta: FrameMeta, frame: np.ndarray,
            rule: ResizeRule | None = None, gate: MotionGate | None = None) -> bool:
        """Cut one frame into the current batch(es), resized first by ``rule`` (the model's
        resize rule and the camera's scale: the same as ``engines.predict``); with a ``gate``,
        only the tiles it says changed (the others get a row marked reused). False when stopped
        before it was done."""
        th, tw = rule.size(meta.height, meta.width) if rule is not None else (meta.height,
                                                                             meta.width)
        if (th, tw) != (meta.height, meta.width):
            frame = resize_frame(frame, (th, tw))  # one resize per frame, into private memory
        lay = self.layout(th, tw)
        total = lay.count
        run = np.ones(total, bool)
        if gate is not None:
            t = meta.capture_ts if meta.pts is None else meta.pts
            run = ~gate.decide(frame, lay, meta.session, t)
        self.last_frame = (total, total - int(run.sum()))
        i = 0
        while i < total:
            if not self._acquire():
                return False
            assert self.slot is not None
            m = self._rows_that_fit(run[i:])
            self._fill(lay, frame, i, m, run[i:i + m], th, tw)
            d = self.pool.desc(self.slot)[self.n:self.n + m]
            d["cam"] = cam
            d["fslot"] = fslot
            d["ntiles"] = total
            d["seq"] = seq
            d["frame_index"] = meta.frame_index
            d["pts"] = math.nan if meta.pts is None else meta.pts
            d["capture_ts"] = meta.capture_ts
            d["frame_height"] = meta.height
            d["frame_width"] = meta.width
            if self.n == 0:
                self.t_first = time.monotonic()
            self.n += m
            i += m
            if self.k == self.pool.max_batch or self.n == self.pool.max_rows:
                self.flush()
        return True

    def _rows_that_fit(self, run: np.ndarray) -> int:
        """How many of the next tiles (``run``: which of them go through the model) fit in the
        current batch: rows left, and tiles left for the ones that run."""
        rows = min(len(run), self.pool.max_rows - self.n)
        room = self.pool.max_batch - self.k
        over = np.flatnonzero(np.cumsum(run[:rows]) > room)
        return int(over[0]) if len(over) else rows

    def _fill(self, lay: TileLayout, frame: np.ndarray, i: int, m: int, run: np.ndarray,
              th: int, tw: int) -> None:
        """Rows ``n .. n+m`` of the current batch: tiles ``i .. i+m`` of ``frame``; the ones
        that run are cut into the next tile rows (``out``), the reused ones get ``out = -1``."""
        assert self.slot is not None
        idx = np.flatnonzero(run)
        r = len(idx)
        if r == m:  # no reuse: one contiguous cut, as without a gate
            sub = dataclasses.replace(lay, positions=lay.positions[i:i + m])
        else:
            sub = dataclasses.replace(lay, positions=tuple(lay.positions[i + j] for j in idx))
        if r:
            sub.cut(frame, out=self.pool.tiles(self.slot)[self.k:self.k + r], bgr=True)
        d = self.pool.desc(self.slot)[self.n:self.n + m]
        d["tile"] = np.arange(i, i + m)
        out = np.full(m, -1, np.int32)
        out[idx] = np.arange(self.k, self.k + r)
        d["out"] = out
        d["height"] = th
        d["width"] = tw
        self.k += r

    def due_in(self) -> float | None:
        """Seconds until the partial batch must go (None: nothing pending)."""
        if self.n == 0:
            return None
        return max(0.0, self.t_first + self.batch_timeout_s - time.monotonic())

    def flush(self) -> None:
        if self.slot is not None and self.n > 0:
            self.pool.submit(self.slot, self.n, time.time(), self.k)
            self.slot = None
            self.n = 0
            self.k = 0


class Tilers:
    """One ``Tiler`` per model's pool; each camera's frames go to its model's."""

    def __init__(self, tilers: list[Tiler]) -> None:
        self.tilers = tilers

    def due_in(self) -> float | None:
        """Seconds until the first partial batch must go (None: nothing pending)."""
        dues = [d for t in self.tilers if (d := t.due_in()) is not None]
        return min(dues) if dues else None

    def flush_due(self) -> None:
        for t in self.tilers:
            due = t.due_in()
            if due is not None and due <= 0:
                t.flush()

    def flush(self) -> None:
        for t in self.tilers:
            t.flush()


def _gates(args: StageArgs, log: Any) -> list[MotionGate | None]:
    gates: list[MotionGate | None] = []
    for name in args.cameras:
        cam = args.cfg.cameras[name]
        mg = cam.motion_gate
        gates.append(MotionGate.from_config(mg) if cam.motion_gated else None)
        if cam.motion_gated:
            log.info("motion gate", camera=name, threshold=mg.threshold,
                     max_age_s=mg.max_age_s)
    return gates


def _add(tiler: Tiler, ring: FrameRing, c: int, item: tuple[int, FrameMeta, np.ndarray],
         rule: ResizeRule, gate: MotionGate | None, log: Any) -> bool:
    """One frame of camera ``c`` into its model's batches; False when stopped meanwhile."""
    fslot, meta, frame = item
    seq = ring.counters.next_seq()
    if not tiler.add(c, fslot, seq, meta, frame, rule, gate):
        return False
    ring.mark_posted(fslot)
    ring.counters.record_tiles(*tiler.last_frame)
    if gate is not None and gate.last_reason and gate.last_reason != "first frame":
        log.debug("whole frame recounted", camera=meta.camera, frame_index=meta.frame_index,
                  reason=gate.last_reason)
    return True


def main(args: StageArgs) -> None:
    """Process target (spawned by the supervisor through ``spawn_child``)."""
    log = get_logger("tile")
    rings = [FrameRing.attach(h) for h in args.rings]
    pools = [BatchPool.attach(m.pool) for m in args.models]
    timeout_s = args.cfg.model.batch_timeout_ms / 1000.0
    tilers = Tilers([Tiler(p, args.cfg.model.overlap, timeout_s, args.stop) for p in pools])
    rules = [ResizeRule.from_dict(args.models[args.model_of(c)].resize,
                                  args.cfg.cameras[name].input_scale)
             for c, name in enumerate(args.cameras)]
    gates = _gates(args, log)
    open_cams = set(range(len(rings)))
    for p in pools:
        log.info("started", cameras=len(rings), window=f"{p.window[0]}x{p.window[1]}",
                 batch=p.max_batch)
    rr = 0
    try:
        while not args.stop.is_set():
            if not open_cams:
                tilers.flush()
                time.sleep(0.05)
                continue
            got_any = False
            cams = sorted(open_cams)
            for j in range(len(cams)):  # round robin so one busy camera cannot starve others
                c = cams[(rr + j) % len(cams)]
                ring = rings[c]
                if len(cams) == 1:
                    due = tilers.due_in()
                    item = ring.get(timeout=0.1 if due is None else due)
                else:
                    item = ring.get(timeout=0)
                if item is None:
                    continue
                if isinstance(item, EndOfStream):
                    ring.counters.set_eos_seen()
                    open_cams.discard(c)
                    tilers.flush()
                    log.info("end of stream", camera=args.cameras[c], reason=item.reason)
                    continue
                if not _add(tilers.tilers[args.model_of(c)], ring, c, item, rules[c], gates[c],
                            log):
                    break
                got_any = True
            rr += 1
            if not got_any:
                due = tilers.due_in()
                if due is not None and due <= 0:
                    tilers.flush_due()
                elif len(open_cams) > 1:
                    time.sleep(0.002 if due is None else min(0.002, due))
        tilers.flush()
    finally:
        log.info("stopped")
        for r in rings:
            r.close()
        for p in pools:
            p.close()
