"""Tile and post stages in-process on real shared memory: tiles land in batch slots with the right
descriptors, the post stage stitches count-preservingly, applies the ROI mask and smoothing, keeps
frames in order across batches, and forwards camera states to sinks. The density maps are written
by the test in place of an engine so the expected counts are exact."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from engines.tiling import TileLayout
from pipeline.config import config_from_dict
from pipeline.events import CameraStatus
from pipeline.results import FrameResult, Sink
from pipeline.shm import BatchPool, FrameMeta, FrameRing, run_prefix
from pipeline.stages.post import PostProcessor
from pipeline.stages.tile import Tiler

WIN, BLOCK = (64, 64), 8


class ListSink(Sink):
    wants_frames = True

    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.frame_means: list[float] = []
        self.status: list[tuple[str, str]] = []

    def write(self, r: FrameResult) -> None:
        self.results.append(r)
        self.frame_means.append(float(r.frame.mean()))  # valid during write only

    def write_status(self, status: CameraStatus) -> None:
        self.status.append((status.camera, status.state))


class CountOnly(Sink):
    """A sink with only ``write``: the interface's defaults cover the rest."""

    def __init__(self) -> None:
        self.frames: list[int] = []

    def write(self, r: FrameResult) -> None:
        self.frames.append(r.frame_index)


@pytest.fixture
def shm():
    prefix = run_prefix()
    rings = [FrameRing.create(f"{prefix}r{i}", 6, 100, 150, "lossless") for i in range(2)]
    pool = BatchPool.create(f"{prefix}b", 4, 5, WIN, BLOCK)
    yield rings, pool
    for r in rings:
        r.close()
        r.unlink()
    pool.close()
    pool.unlink()


def _cfg(tmp: Path, roi: str | None, method: str = "none") -> object:
    cams = {"a": {"url": "a.mp4", "smoothing": {"method": method, "alpha": 0.5}},
            "b": {"url": "b.mp4", "roi_mask": roi}}
    return config_from_dict({"cameras": cams, "model": {"random_init": "ebc-tiny-rn"}},
                            base_dir=tmp)


def _infer(pool: BatchPool, slot: int) -> None:
    """Stand-in for the engine: each tile's map is its mean pixel value per cell (known counts)."""
    n = pool.count(slot)
    tiles = pool.tiles(slot)[:n]
    means = tiles.mean(axis=(1, 2, 3))
    pool.outputs(slot)[:n] = means[:, None, None, None]


def test_tile_and_post_stitch_in_order_with_roi_and_frames(tmp_path: Path, shm) -> None:
    import cv2

    rings, pool = shm
    roi = np.zeros((100, 150), np.uint8)
    roi[:, :75] = 255  # left half inside
    cv2.imwrite(str(tmp_path / "roi.png"), roi)
    cfg = _cfg(tmp_path, str(tmp_path / "roi.png"))
    sink, plain = ListSink(), CountOnly()
    post = PostProcessor(cfg, ["a", "b"], rings, pool, [plain, sink], "test-engine")
    tiler = Tiler(pool, overlap=0.0, batch_timeout_s=0.0)
    lay = TileLayout.plan(100, 150, WIN, BLOCK)  # 2 x 3 = 6 tiles: more than a batch of 5
    assert tiler.layout(100, 150) is post._layout(100, 150) is lay  # one layout cache
    n_frames = 4
    for i in range(n_frames):
        for c, ring in enumerate(rings):
            frame = np.full((100, 150, 3), 10 * (i + 1) + c, np.uint8)
            assert ring.put(frame, FrameMeta("ab"[c], i, i / 10, time.time(), 100, 150))
    for _ in range(n_frames):
        for c, ring in enumerate(rings):
            slot, meta, frame = ring.get(timeout=1)
            assert tiler.add(c, slot, ring.counters.next_seq(), meta, frame)
            ring.mark_posted(slot)
            while (b := pool.take_infer(timeout=0)) is not None:
                _infer(pool, b)
                pool.done_infer(b)
            while (b := pool.take_post(timeout=0)) is not None:
                post.process_batch(b)
    tiler.flush()
    while (b := pool.take_infer(timeout=0)) is not None:
        _infer(pool, b)
        pool.done_infer(b)
    while (b := pool.take_post(timeout=0)) is not None:
        post.process_batch(b)
    post.status(CameraStatus("a", "finished", "eof", 1.0))

    a = [r for r in sink.results if r.camera == "a"]
    b = [r for r in sink.results if r.camera == "b"]
    assert [r.frame_index for r in a] == [r.frame_index for r in b] == list(range(n_frames))
    for i, r in enumerate(a):
        v = (10 * (i + 1)) / 255.0  # every cell holds the tile's mean pixel value
        assert r.raw_density.map.shape == lay.map_shape
        # stitched map covers the frame; padding cells hold zero-padded means, so compare
        # against the stitch of the same per-tile maps
        tiles = lay.cut(np.full((100, 150, 3), 10 * (i + 1), np.uint8))
        expect = lay.stitch(np.broadcast_to(tiles.mean(axis=(1, 2, 3))[:, None, None, None],
                                            (lay.count, 1, 8, 8)).copy())
        assert r.raw_count == pytest.approx(float(expect.sum()), rel=1e-5)
        assert r.count == r.raw_count  # method none
        assert r.raw_density.map.max() == pytest.approx(v, rel=1e-5)
        assert r.pts == pytest.approx(i / 10) and r.engine_id == "test-engine"
        assert r.cell_pixels == BLOCK and r.frame_size == (100, 150)
    for r in b:  # ROI: right half of camera b zeroed
        cols = r.raw_density.map.shape[1]
        assert np.all(r.raw_density.map[:, (cols + 1) // 2 + 1:] == 0)
        assert np.all(r.raw_density.map[:, : cols // 2 - 1] > 0)
    assert sink.frame_means[:2] == [10.0, 11.0]  # the sink saw each camera's own frame
    assert sink.status == [("a", "finished")]
    assert len(plain.frames) == len(sink.results)  # every sink gets every result, in order
    for ring in rings:  # every frame slot went back to the pool
        assert ring.stats()["emitted"] == n_frames
        assert ring.put(np.zeros((100, 150, 3), np.uint8), FrameMeta("x", 9, None, 0, 100, 150),
                        timeout=0)


def test_post_smoothing_keeps_raw(tmp_path: Path, shm) -> None:
    rings, pool = shm
    cfg = _cfg(tmp_path, None, method="ema")
    sink = ListSink()
    post = PostProcessor(cfg, ["a", "b"], rings, pool, [sink], "e")
    tiler = Tiler(pool, overlap=0.0, batch_timeout_s=0.0)
    for i, level in enumerate((100, 0, 0)):
        rings[0].put(np.full((100, 150, 3), level, np.uint8), FrameMeta("a", i, i / 10, 0, 100, 150))
        slot, meta, frame = rings[0].get(timeout=1)
        tiler.add(0, slot, rings[0].counters.next_seq(), meta, frame)
        tiler.flush()
        while (b := pool.take_infer(timeout=0)) is not None:
            _infer(pool, b)
            pool.done_infer(b)
        while (b := pool.take_post(timeout=0)) is not None:
            post.process_batch(b)
    raw = [r.raw_count for r in sink.results]
    sm = [r.count for r in sink.results]
    assert raw[1] == raw[2] == 0.0 and raw[0] > 0
    assert sm == pytest.approx([raw[0], raw[0] / 2, raw[0] / 4])  # EMA alpha 0.5
    # heatmaps decay with their own weight (heatmap_alpha, default 0.3); the raw map is kept
    assert sink.results[1].density.count == pytest.approx(raw[0] * 0.7, rel=1e-5)
    assert sink.results[1].raw_density.count == 0.0


class OrderSink(Sink):
    """Results and state changes in the order the sink got them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def write(self, r: FrameResult) -> None:
        self.seen.append(("frame", r.frame_index))

    def write_status(self, status: CameraStatus) -> None:
        self.seen.append(("status", status.state))


def _count_through(post: PostProcessor, ring: FrameRing, pool: BatchPool, tiler: Tiler) -> None:
    """What the tile, inference and post stages do with the next item of camera a's ring."""
    item = ring.get(timeout=1)
    if isinstance(item, tuple):
        slot, meta, frame = item
        tiler.add(0, slot, ring.counters.next_seq(), meta, frame)
        ring.mark_posted(slot)
        tiler.flush()
    else:
        ring.counters.set_eos_seen()
    while (b := pool.take_infer(timeout=0)) is not None:
        _infer(pool, b)
        pool.done_infer(b)
    while (b := pool.take_post(timeout=0)) is not None:
        post.process_batch(b)


@pytest.mark.parametrize("state", ["finished", "offline"])
def test_an_end_reaches_sinks_after_the_cameras_last_frame(tmp_path: Path, shm,
                                                           state: str) -> None:
    # ingest reports the end when it decoded the last frame, before the stages counted it; the
    # sinks (the alert sink ends alerts on it) must get it after that frame
    rings, pool = shm
    ring = rings[0]
    sink = OrderSink()
    post = PostProcessor(_cfg(tmp_path, None), ["a", "b"], rings, pool, [sink], "e")
    tiler = Tiler(pool, overlap=0.0, batch_timeout_s=0.0)
    for i in range(2):
        ring.put(np.full((100, 150, 3), 50, np.uint8), FrameMeta("a", i, i / 10, 0, 100, 150))
    ring.put_end(state)  # ingest ends the stream, then announces the state
    post.status(CameraStatus("a", state, "end", 1.0))
    post.status(CameraStatus("b", "online", "first frame", 1.0))  # other cameras pass
    post.release_held()
    assert sink.seen == [("status", "online")]
    _count_through(post, ring, pool, tiler)
    post.release_held()
    assert sink.seen == [("status", "online"), ("frame", 0)]  # frame 1 still in the ring
    _count_through(post, ring, pool, tiler)
    post.release_held()  # counted, but the tile stage has not seen the end yet
    assert sink.seen == [("status", "online"), ("frame", 0), ("frame", 1)]
    _count_through(post, ring, pool, tiler)
    post.release_held()
    assert sink.seen == [("status", "online"), ("frame", 0), ("frame", 1), ("status", state)]
    assert not post.held
    # the supervisor ends a run once every end it relayed reached the sinks
    assert [r.stats()["ends_out"] for r in rings] == [1, 0]


def test_a_crashed_ingests_offline_passes_at_once(tmp_path: Path, shm) -> None:
    # the stream stays open (the supervisor restarts ingest and frames go on): nothing waits
    rings, pool = shm
    sink = OrderSink()
    post = PostProcessor(_cfg(tmp_path, None), ["a", "b"], rings, pool, [sink], "e")
    rings[0].put(np.zeros((100, 150, 3), np.uint8), FrameMeta("a", 0, 0.0, 0, 100, 150))
    post.status(CameraStatus("a", "offline", "ingest crashed: OSError: boom", 1.0))
    post.status(CameraStatus("a", "starting", "restarted", 2.0))
    assert sink.seen == [("status", "offline"), ("status", "starting")] and not post.held


def test_a_stopping_post_stage_delivers_held_ends(tmp_path: Path, shm) -> None:
    rings, pool = shm
    sink = OrderSink()
    post = PostProcessor(_cfg(tmp_path, None), ["a", "b"], rings, pool, [sink], "e")
    rings[0].put(np.zeros((100, 150, 3), np.uint8), FrameMeta("a", 0, 0.0, 0, 100, 150))
    rings[0].put_end("finished")
    post.status(CameraStatus("a", "finished", "end", 1.0))
    post.status(CameraStatus("a", "starting", "reload", 2.0))  # keeps its place behind the end
    post.release_held()
    assert sink.seen == []
    post.release_held(force=True)  # the frame will never be counted: the stage stops
    assert sink.seen == [("status", "finished"), ("status", "starting")]
