"""Post stage: per-tile density maps -> one count-preserving map per frame -> ROI mask ->
smoothing -> ``FrameResult`` (on ``DensityMap``s) -> every sink's ``write``, in order. Camera state
changes go to every sink's ``write_status`` (``pipeline.results.Sink``); an end (``finished``,
``offline``) waits until the camera's last frame was counted, so sinks see it after that frame.

Batches arrive in submission order per model's pool (also across an inference restart), and a
camera uses one pool, so a camera's frames complete in order; the pools of several models are
served round robin (``pipeline.shm.PoolSet``). A frame whose tiles can never all arrive (its tile
process died) is dropped and counted as lost when the camera's next frame shows up. A tile the
motion gate reused (descriptor ``out`` = -1) takes its map from the camera's last counted frame,
which this stage keeps per camera; the stitch is the same either way.

Example (what the supervisor does)::

    spawn_child(ctx, ChildSpec("post", "pipeline.stages.post:main", stop), stage_args,
                status_q)
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.density import DensityMap
from engines.log import get_logger
from engines.tiling import TileLayout
from pipeline.config import AppConfig
from pipeline.events import CameraStatus
from pipeline.reload import SettingsUpdate
from pipeline.results import FrameResult, Sink
from pipeline.shm import BatchPool, FrameRing, PoolSet
from pipeline.smoothing import Smoother
from pipeline.stages.common import StageArgs


@dataclass
class _Pending:
    seq: int
    fslot: int
    ntiles: int
    frame_index: int
    pts: float | None
    capture_ts: float
    height: int  # as tiled (after the resize rule)
    width: int
    frame_height: int  # as decoded
    frame_width: int
    maps: np.ndarray
    got: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    pool: int = 0  # the model's pool the frame's tiles came through
    reused: list[int] = field(default_factory=list)  # tiles the motion gate reused
    broken: bool = False  # a reused tile had no map to reuse: the frame cannot be counted


def load_roi_mask(path: str, map_shape: tuple[int, int]) -> np.ndarray:
    """Share of each map cell inside the ROI (PNG, 255 inside), resized to ``map_shape``."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"roi_mask {path}: not a readable image")
    m = cv2.resize(img.astype(np.float32) / 255.0, (map_shape[1], map_shape[0]),
                   interpolation=cv2.INTER_AREA)
    return np.clip(m, 0.0, 1.0)


class PostProcessor:
    """Assembles frames from batches and emits results to sinks (usable in-process too).

    ``pools`` and ``engine_ids``: one per model (or a single pool and id; a batch's descriptors
    say which camera each tile is of); ``models``: each model's label, in every result."""

    def __init__(self, cfg: AppConfig, cameras: list[str], rings: list[FrameRing],
                 pools: BatchPool | Sequence[BatchPool], sinks: list[Sink],
                 engine_ids: str | Sequence[str], run_id: str | None = None, *,
                 models: Sequence[str] | None = None) -> None:
        self.cfg = cfg
        self.cameras = cameras
        self.rings = rings
        self.pools = [pools] if isinstance(pools, BatchPool) else list(pools)
        self.sinks = sinks
        self.engine_ids = [engine_ids] if isinstance(engine_ids, str) else list(engine_ids)
        self.models = list(models) if models is not None else [""] * len(self.pools)
        self.run_id = run_id
        self.log = get_logger("post")
        self.want_frames = any(s.wants_frames for s in sinks)
        self.pending: list[_Pending | None] = [None] * len(cameras)
        self.last_maps: list[np.ndarray | None] = [None] * len(cameras)  # per-tile, last frame
        self.smoothers = [Smoother(cfg.cameras[c].smoothing) for c in cameras]
        self.masks: dict[tuple[int, tuple[int, int]], np.ndarray | None] = {}
        self.sink_errors: dict[int, int] = {}
        self.held: dict[int, list[CameraStatus]] = {}  # ends waiting for the camera's last frame

    @property
    def pool(self) -> BatchPool:
        """The first model's pool (the only one of a single-model run)."""
        return self.pools[0]

    def _layout(self, h: int, w: int, pool: int = 0) -> TileLayout:
        # the tile stage's layout for this frame size (one memoised ``TileLayout.plan``)
        p = self.pools[pool]
        return TileLayout.plan(h, w, p.window, p.block, self.cfg.model.overlap)

    def _mask(self, cam: int, shape: tuple[int, int]) -> np.ndarray | None:
        key = (cam, shape)
        if key not in self.masks:
            path = self.cfg.cameras[self.cameras[cam]].roi_mask
            self.masks[key] = load_roi_mask(path, shape) if path else None
        return self.masks[key]

    def _drop(self, cam: int) -> None:
        p = self.pending[cam]
        if p is not None:
            self.rings[cam].release(p.fslot)
            self.rings[cam].counters.record_lost()
            self.log.warning("frame lost", camera=self.cameras[cam], frame_index=p.frame_index,
                             reason="incomplete tiles")
            self.pending[cam] = None

    def process_batch(self, slot: int, pool: int = 0) -> int:
        """Consume one batch slot of model ``pool``'s pool; returns how many results it
        completed."""
        bp = self.pools[pool]
        n = bp.count(slot)
        desc = bp.desc(slot)[:n].copy()
        outs = bp.outputs(slot)
        done = 0
        for j in range(n):
            d = desc[j]
            cam, seq, tile = int(d["cam"]), int(d["seq"]), int(d["tile"])
            p = self.pending[cam]
            if p is not None and p.seq != seq:
                self._drop(cam)  # an older frame that will never complete
                p = None
            if p is None:
                if tile != 0:
                    # the start of this frame went to a post process that died: its frame slot
                    # was given back by the supervisor's recovery; skip the rest of its tiles
                    continue
                p = self._start(d, pool)
                self.pending[cam] = p
            self._take_tile(cam, p, tile, int(d["out"]), outs)
            if p.got.all():
                self._complete(cam, p)
                done += 1
        bp.release(slot)
        return done

    def _start(self, d: np.void, pool: int) -> _Pending:
        """A frame's record, from the descriptor of its first tile."""
        mh, mw = self.pools[pool].out_shape[1:]
        ntiles = int(d["ntiles"])
        pts = float(d["pts"])
        return _Pending(int(d["seq"]), int(d["fslot"]), ntiles, int(d["frame_index"]),
                        None if math.isnan(pts) else pts, float(d["capture_ts"]),
                        int(d["height"]), int(d["width"]), int(d["frame_height"]),
                        int(d["frame_width"]), np.empty((ntiles, mh, mw), np.float32),
                        np.zeros(ntiles, bool), pool)

    def _take_tile(self, cam: int, p: _Pending, tile: int, out: int, outs: np.ndarray) -> None:
        """Tile ``tile`` of frame ``p``: the model's map (row ``out`` of the batch's outputs),
        or the one of the camera's last counted frame when the motion gate reused it."""
        if out >= 0:
            p.maps[tile] = outs[out, 0]
        else:
            last = self.last_maps[cam]
            if last is None or last.shape != p.maps.shape:
                p.broken = True  # cannot happen while tile and post restart together
            else:
                p.maps[tile] = last[tile]
            p.reused.append(tile)
        p.got[tile] = True

    def _complete(self, cam: int, p: _Pending) -> None:
        self.pending[cam] = None
        if p.broken:
            self.rings[cam].release(p.fslot)
            self.rings[cam].counters.record_lost()
            self.log.error("frame lost", camera=self.cameras[cam], frame_index=p.frame_index,
                           reason="a reused tile has no earlier map")
            return
        self._emit(cam, p)
        self.last_maps[cam] = p.maps  # the maps of its reused tiles' next frames

    def _emit(self, cam: int, p: _Pending) -> None:
        lay = self._layout(p.height, p.width, p.pool)
        raw = lay.stitch(p.maps)
        mask = self._mask(cam, raw.shape)
        if mask is not None:
            raw = raw * mask
        raw_count = float(raw.sum(dtype=np.float64))
        t = p.pts if p.pts is not None else p.capture_ts
        count, density = self.smoothers[cam].update(raw_count, raw, t)
        ring = self.rings[cam]
        block = int(self.pools[p.pool].block)
        scale = p.height / p.frame_height  # the resize rule's: a cell is block / scale pixels
        gated = self.cfg.cameras[self.cameras[cam]].motion_gated
        result = FrameResult(
            camera=self.cameras[cam], frame_index=p.frame_index, pts=p.pts,
            capture_ts=p.capture_ts, count=count, raw_count=raw_count,
            density=DensityMap(density, block, scale), raw_density=DensityMap(raw, block, scale),
            frame_size=(p.frame_height, p.frame_width), engine_id=self.engine_ids[p.pool],
            model=self.models[p.pool], tiles=p.ntiles,
            reused_tiles=tuple(sorted(p.reused)) if gated else None,
            # a zero-copy view of the frame slot, valid only during write(): sinks that keep it
            # must copy it
            frame=ring.frame(p.fslot) if self.want_frames else None,
        )
        result.result_ts = time.time()
        for i, sink in enumerate(self.sinks):
            try:
                sink.write(result)
            except Exception as e:  # one failing sink must not stop counting or the others
                self.sink_errors[i] = self.sink_errors.get(i, 0) + 1
                if self.sink_errors[i] in (1, 10, 100) or self.sink_errors[i] % 1000 == 0:
                    self.log.error("sink failed", camera=result.camera, sink=type(sink).__name__,
                                   error=f"{type(e).__name__}: {e}", times=self.sink_errors[i])
        result.frame = None
        ring.counters.record_result(time.time() - p.capture_ts, p.frame_index)
        ring.release(p.fslot)

    def control(self, item: CameraStatus | SettingsUpdate) -> None:
        """A message from the supervisor: a camera state change, or new zones/alerts."""
        if isinstance(item, SettingsUpdate):
            self.apply_settings(item)
        else:
            self.status(item)

    def apply_settings(self, update: SettingsUpdate) -> None:
        """New zones and alert rules of some cameras (live reload), from the next frame on."""
        from engines.yamlconfig import FrozenDict
        from pipeline.outputs import apply_camera_settings

        self.cfg = self.cfg.model_copy(update={"cameras": FrozenDict(
            {**self.cfg.cameras, **update.cameras})})
        for camera in update.cameras:
            try:
                apply_camera_settings(self.sinks, self.cfg, camera, self.run_id)
                self.log.info("zones and alerts applied", camera=camera,
                              zones=len(self.cfg.cameras[camera].zones),
                              alerts=len(self.cfg.cameras[camera].alerts))
            except Exception as e:  # a bad update must not stop counting
                self.log.error("zones and alerts not applied", camera=camera,
                               error=f"{type(e).__name__}: {e}")

    def status(self, st: CameraStatus) -> None:
        """Hand a camera state change to every sink, or hold it (see ``release_held``).

        Why hold an end: ingest reports ``finished`` when it decoded the last frame, while that
        frame and the ones before it are still being tiled and inferred. Delivered at once, the
        alert sink would end the camera's alerts and its last frames would start them again."""
        cam = self.cameras.index(st.camera) if st.camera in self.cameras else -1
        # ingest ends the stream before it announces the end; a crashed ingest's ``offline``
        # leaves the stream open (it is restarted and goes on): that one passes at once
        ending = st.ended and cam >= 0 and self.rings[cam].ended
        if cam in self.held or (ending and not self._settled(cam)):
            self.held.setdefault(cam, []).append(st)  # later changes keep their order
            return
        self._deliver(st)

    def _settled(self, cam: int) -> bool:
        """The tile stage saw the end of the camera's stream (every frame before it was tiled)
        and every tiled frame was counted or lost."""
        r = self.rings[cam].stats()
        return bool(r["eos_seen"] and not r["depth"] and r["emitted"] + r["lost"] >= r["tiled"])

    def release_held(self, force: bool = False) -> None:
        """Deliver the held changes of each camera that settled (all of them when ``force``: the
        stage is stopping and no more frames will be counted)."""
        for cam in [c for c in self.held if force or self._settled(c)]:
            for st in self.held.pop(cam):
                self._deliver(st)

    def _deliver(self, st: CameraStatus) -> None:
        """One state change to every sink (one failing sink does not stop the rest); an end is
        counted in the camera's ring for the supervisor (``FrameCounters.record_end_out``)."""
        for sink in self.sinks:
            try:
                sink.write_status(st)
            except Exception as e:
                self.log.error("sink status failed", camera=st.camera, sink=type(sink).__name__,
                               error=f"{type(e).__name__}: {e}")
        if st.ended and st.camera in self.cameras:
            self.rings[self.cameras.index(st.camera)].counters.record_end_out()


class RingTally:
    """The post stage's ``OutputTally``: each camera's shared-memory ``FrameCounters``, so what
    the outputs lost is known to the supervisor even after this process is killed."""

    def __init__(self, cameras: list[str], rings: list[FrameRing]) -> None:
        self._counters = {c: r.counters for c, r in zip(cameras, rings, strict=True)}

    def queued(self, camera: str) -> None:
        if camera in self._counters:
            self._counters[camera].record_output(queued=1)

    def delivered(self, camera: str) -> None:
        if camera in self._counters:
            self._counters[camera].record_output(delivered=1)

    def unrecorded(self, camera: str) -> None:
        if camera in self._counters:
            self._counters[camera].record_output(unrecorded=1)


def main(args: StageArgs, status_q: Any) -> None:
    """Process target (spawned by the supervisor through ``spawn_child``)."""
    log = get_logger("post")
    from pipeline.sinks import build_sinks

    rings = [FrameRing.attach(h) for h in args.rings]
    pools = PoolSet([BatchPool.attach(m.pool) for m in args.models])
    sinks = build_sinks(args.cfg, redis_url=args.redis_url, recorder_rings=args.recorder_rings,
                        run_id=args.run_id, values=args.values,
                        tally=RingTally(args.cameras, rings))
    opened: list[Sink] = []
    try:
        for s in sinks:
            s.open()
            opened.append(s)
        post = PostProcessor(args.cfg, args.cameras, rings, pools.pools, opened,
                             [m.engine_id for m in args.models], run_id=args.run_id,
                             models=[m.label for m in args.models])
        log.info("started", sinks=",".join(type(s).__name__ for s in opened) or "none")
        while not args.stop.is_set():
            while True:
                try:
                    post.control(status_q.get_nowait())
                except queue.Empty:
                    break
            got = pools.take_post(timeout=0.1)
            if got is not None:
                post.process_batch(got[1], got[0])
            if post.held:
                post.release_held()
        while True:  # state changes that arrived during the drain still reach the sinks
            try:
                post.control(status_q.get_nowait())
            except queue.Empty:
                break
        post.release_held(force=True)
    finally:
        for s in opened:
            try:
                s.close()
            except Exception as e:
                log.error("sink close failed", sink=type(s).__name__, error=str(e))
        log.info("stopped")
        for r in rings:
            r.close()
        pools.close()
