"""Tile stage: frames from every camera ring -> model-size windows -> shared-memory batches.

Uses ``engines.tiling.TileLayout`` (the one tiling implementation) and cuts each window straight
into a batch slot, normalised to float32 RGB in [0, 1]; tiles of several cameras share a batch.
A batch is submitted when full, or ``model.batch_timeout_ms`` after its first tile when no more
frames are waiting. Never imports torch: this process stays free of CUDA.

Example (what the supervisor does)::

    spawn_child(ctx, ChildSpec("tile", "pipeline.stages.tile:main", stop), stage_args)
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from engines.log import get_logger
from engines.predict import ResizeRule, resize_frame
from engines.tiling import TileLayout
from pipeline.events import EndOfStream
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
        self.n = 0
        self.t_first = 0.0

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
            rule: ResizeRule | None = None) -> bool:
        """Cut one frame into the current batch(es), resized first by ``rule`` (the model's
        resize rule and the camera's scale: the same as ``engines.predict``). False when stopped
        before it was done."""
        th, tw = rule.size(meta.height, meta.width) if rule is not None else (meta.height,
                                                                             meta.width)
        if (th, tw) != (meta.height, meta.width):
            frame = resize_frame(frame, (th, tw))  # one resize per frame, into private memory
        lay = self.layout(th, tw)
        total = lay.count
        i = 0
        while i < total:
            if not self._acquire():
                return False
            assert self.slot is not None
            k = min(total - i, self.pool.max_batch - self.n)
            sub = dataclasses.replace(lay, positions=lay.positions[i:i + k])
            sub.cut(frame, out=self.pool.tiles(self.slot)[self.n:self.n + k], bgr=True)
            d = self.pool.desc(self.slot)[self.n:self.n + k]
            d["cam"] = cam
            d["fslot"] = fslot
            d["tile"] = np.arange(i, i + k)
            d["ntiles"] = total
            d["seq"] = seq
            d["frame_index"] = meta.frame_index
            d["pts"] = math.nan if meta.pts is None else meta.pts
            d["capture_ts"] = meta.capture_ts
            d["height"] = th
            d["width"] = tw
            d["frame_height"] = meta.height
            d["frame_width"] = meta.width
            if self.n == 0:
                self.t_first = time.monotonic()
            self.n += k
            i += k
            if self.n == self.pool.max_batch:
                self.flush()
        return True

    def due_in(self) -> float | None:
        """Seconds until the partial batch must go (None: nothing pending)."""
        if self.n == 0:
            return None
        return max(0.0, self.t_first + self.batch_timeout_s - time.monotonic())

    def flush(self) -> None:
        if self.slot is not None and self.n > 0:
            self.pool.submit(self.slot, self.n, time.time())
            self.slot = None
            self.n = 0


def main(args: StageArgs) -> None:
    """Process target (spawned by the supervisor through ``spawn_child``)."""
    log = get_logger("tile")
    rings = [FrameRing.attach(h) for h in args.rings]
    pool = BatchPool.attach(args.pool)
    tiler = Tiler(pool, args.cfg.model.overlap, args.cfg.model.batch_timeout_ms / 1000.0, args.stop)
    rules = [ResizeRule.from_dict(args.resize, args.cfg.cameras[name].input_scale)
             for name in args.cameras]
    open_cams = set(range(len(rings)))
    log.info("started", cameras=len(rings), window=f"{pool.window[0]}x{pool.window[1]}",
             batch=pool.max_batch)
    rr = 0
    try:
        while not args.stop.is_set():
            if not open_cams:
                tiler.flush()
                time.sleep(0.05)
                continue
            got_any = False
            cams = sorted(open_cams)
            for j in range(len(cams)):  # round robin so one busy camera cannot starve others
                c = cams[(rr + j) % len(cams)]
                ring = rings[c]
                if len(cams) == 1:
                    due = tiler.due_in()
                    item = ring.get(timeout=0.1 if due is None else due)
                else:
                    item = ring.get(timeout=0)
                if item is None:
                    continue
                if isinstance(item, EndOfStream):
                    ring.counters.set_eos_seen()
                    open_cams.discard(c)
                    tiler.flush()
                    log.info("end of stream", camera=args.cameras[c], reason=item.reason)
                    continue
                fslot, meta, frame = item
                seq = ring.counters.next_seq()
                if not tiler.add(c, fslot, seq, meta, frame, rules[c]):
                    break
                ring.mark_posted(fslot)
                got_any = True
            rr += 1
            if not got_any:
                due = tiler.due_in()
                if due is not None and due <= 0:
                    tiler.flush()
                elif len(open_cams) > 1:
                    time.sleep(0.002 if due is None else min(0.002, due))
        tiler.flush()
    finally:
        log.info("stopped")
        for r in rings:
            r.close()
        pool.close()
