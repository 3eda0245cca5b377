"""Motion-gated tiles: the gate's decisions on synthetic scenes, and the tile -> inference ->
post path in-process on real shared memory with a real (tiny, random-init) engine: reused tiles
cost no inference, keep their density bit for bit, and a frame whose tiles are all reused still
reaches the sinks in order and gives its frame slot back."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from engines.tiling import TileLayout
from pipeline.config import config_from_dict
from pipeline.motion import MotionGate
from pipeline.results import FrameResult, Sink
from pipeline.shm import BatchPool, FrameMeta, FrameRing, run_prefix
from pipeline.stages.post import PostProcessor
from pipeline.stages.tile import Tiler

H, W = 480, 640


def background(seed: int = 0) -> np.ndarray:
    """A textured static scene: blobs of 20-40 pixels (floor tiles, benches, shop fronts) over
    fine grain, edges everywhere."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (H // 24, W // 24, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-10, 11, (H, W, 3), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def with_person(img: np.ndarray, x: int, y: int) -> np.ndarray:
    """``img`` with a dark 30 x 80 figure at (x, y): one person walking."""
    out = img.copy()
    out[y:y + 80, x:x + 30] = 20
    return out


def noisy(img: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    """Sensor / compression noise: what a static camera's frames differ by."""
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


LAYOUT = TileLayout.plan(H, W, (224, 224), 8, 0.0)  # 3 x 3 tiles


def tiles_touched(x: int, y: int, w: int = 30, h: int = 80,
                  layout: TileLayout = LAYOUT) -> set[int]:
    """The tiles holding at least 8 x 8 pixels of the figure (a sliver of a few pixels changes
    no count and is below any useful threshold)."""
    wh, ww = layout.window
    return {i for i, (ty, tx) in enumerate(layout.positions)
            if min(x + w, tx + ww) - max(x, tx) >= 8 and min(y + h, ty + wh) - max(y, ty) >= 8}


def test_static_scene_reuses_every_tile_after_the_first_frame() -> None:
    gate = MotionGate(threshold=6.0, max_age_s=1000.0)
    rng = np.random.default_rng(1)
    bg = background()
    first = gate.decide(noisy(bg, rng), LAYOUT, session=1, t=0.0)
    assert not first.any() and gate.last_reason == "first frame"
    reused = [gate.decide(noisy(bg, rng), LAYOUT, session=1, t=i / 10).mean()
              for i in range(1, 50)]
    assert np.mean(reused) >= 0.9  # the bar; in fact every tile
    assert min(reused) == 1.0


def test_a_moving_persons_tiles_are_always_recounted() -> None:
    gate = MotionGate(threshold=6.0, max_age_s=1000.0)
    rng = np.random.default_rng(2)
    bg = background()
    gate.decide(noisy(bg, rng), LAYOUT, session=1, t=0.0)
    prev = None
    skipped = []
    for i in range(40):
        x, y = 20 + 15 * i, 150 + 3 * i  # walks across the middle row of tiles
        reuse = gate.decide(noisy(with_person(bg, x, y), rng), LAYOUT, session=1, t=i / 10)
        touched = tiles_touched(x, y) | (prev or set())  # where it is, and where it was
        assert not reuse[sorted(touched)].any(), (i, touched, np.flatnonzero(~reuse))
        skipped.append(reuse.mean())
        prev = tiles_touched(x, y)
    assert np.mean(skipped) > 0.5  # the rest of the scene is still reused


def test_reconnect_size_change_and_lighting_recount_the_whole_frame() -> None:
    gate = MotionGate(threshold=6.0, max_age_s=1000.0)
    bg = background()
    gate.decide(bg, LAYOUT, session=1, t=0.0)
    assert gate.decide(bg, LAYOUT, session=1, t=0.1).all()
    assert not gate.decide(bg, LAYOUT, session=2, t=0.2).any()  # the camera reconnected
    assert gate.last_reason == "new source session"
    assert gate.decide(bg, LAYOUT, session=2, t=0.3).all()
    brighter = np.clip(bg.astype(int) + 25, 0, 255).astype(np.uint8)  # lights switched on
    assert not gate.decide(brighter, LAYOUT, session=2, t=0.4).any()
    assert gate.last_reason == "brightness jump"
    assert gate.decide(brighter, LAYOUT, session=2, t=0.5).all()
    small = brighter[:240, :320]
    small_layout = TileLayout.plan(240, 320, (224, 224), 8, 0.0)
    assert not gate.decide(small, small_layout, session=2, t=0.6).any()
    assert gate.last_reason == "frame size changed"
    # most tiles changed at once (the camera was bumped): every tile, also the still ones
    shifted = np.roll(bg, 40, axis=1)
    gate2 = MotionGate(threshold=6.0, max_age_s=1000.0)
    gate2.decide(bg, LAYOUT, session=1, t=0.0)
    shifted[:, :224] = bg[:, :224]  # the left column of tiles did not change
    assert not gate2.decide(shifted, LAYOUT, session=1, t=0.1).any()
    assert gate2.last_reason == "scene changed"


def test_max_age_forces_a_recount() -> None:
    gate = MotionGate(threshold=6.0, max_age_s=2.0)
    bg = background()
    gate.decide(bg, LAYOUT, session=1, t=10.0)
    assert gate.decide(bg, LAYOUT, session=1, t=11.9).all()
    assert not gate.decide(bg, LAYOUT, session=1, t=12.0).any()  # 2 s since counted
    assert gate.decide(bg, LAYOUT, session=1, t=13.0).all()
    assert not gate.decide(bg, LAYOUT, session=1, t=5.0).any()  # time went back: recount


def test_overlapping_tiles_keep_their_own_reference() -> None:
    """A tile is compared with the frame IT was last counted on, not with a neighbour's."""
    lay = TileLayout.plan(H, W, (224, 224), 8, 0.5)
    assert lay.count > 9
    gate = MotionGate(threshold=6.0, max_age_s=1000.0)
    bg = background()
    gate.decide(bg, lay, session=1, t=0.0)
    moved = with_person(bg, 300, 200)
    first = gate.decide(moved, lay, session=1, t=0.1)
    touched = tiles_touched(300, 200, layout=lay)
    assert set(np.flatnonzero(~first)) == touched
    # the figure stays: every tile now matches its own reference, overlaps included
    assert gate.decide(moved, lay, session=1, t=0.2).all()


# ------------------------------------------------------------- through tile, engine and post
class ListSink(Sink):
    def __init__(self) -> None:
        self.results: list[FrameResult] = []

    def write(self, r: FrameResult) -> None:
        self.results.append(r)


@pytest.fixture(scope="module")
def engine():
    from engines.backends import load_engine

    eng = load_engine(None, backend="torch", random_init="ebc-tiny-rn", max_batch=4, threads=1)
    yield eng
    eng.close()


def _run(tmp: Path, engine, frames: list[np.ndarray], gate: bool, overlap: float,
         sessions: list[int] | None = None) -> tuple[list[FrameResult], dict[str, int], int]:
    """Frames of one camera through Tiler -> engine -> PostProcessor on real shared memory."""
    prefix = run_prefix()
    ring = FrameRing.create(f"{prefix}r", 4, H, W, "lossless")
    pool = BatchPool.create(f"{prefix}b", 3, 4, engine.window, engine.block_size)
    cfg = config_from_dict({"cameras": {"a": {"url": "a.mp4", "smoothing": {"method": "none"},
                                              "motion_gate": {"enabled": gate,
                                                              "max_age_s": 1000}}},
                            "model": {"random_init": "ebc-tiny-rn", "overlap": overlap}},
                           base_dir=tmp)
    sink = ListSink()
    post = PostProcessor(cfg, ["a"], [ring], pool, [sink], engine.engine_id, models=["tiny"])
    tiler = Tiler(pool, overlap=overlap, batch_timeout_s=0.0)
    g = MotionGate.from_config(cfg.cameras["a"].motion_gate) if gate else None
    runs = 0
    try:
        for i, f in enumerate(frames):
            s = sessions[i] if sessions else 1
            assert ring.put(f, FrameMeta("a", i, i / 10, time.time(), H, W, s), timeout=1)
            slot, meta, frame = ring.get(timeout=1)
            assert tiler.add(0, slot, ring.counters.next_seq(), meta, frame, None, g)
            ring.mark_posted(slot)
            ring.counters.record_tiles(*tiler.last_frame)
            tiler.flush()  # a batch per frame: the frames' tiles never share one here
            while (b := pool.take_infer(timeout=0)) is not None:
                k = pool.tile_count(b)
                if k:
                    pool.outputs(b)[:k] = engine.run(pool.tiles(b)[:k])
                    runs += k
                pool.done_infer(b)
            while (b := pool.take_post(timeout=0)) is not None:
                post.process_batch(b)
        stats = ring.stats()
        assert pool.stats()["tiles"] == runs
        # every frame slot came back: as many free slots as the ring has
        for _ in range(ring.slots):
            assert ring.put(frames[0], FrameMeta("a", 99, None, 0, H, W), timeout=0)
    finally:
        ring.close()
        ring.unlink()
        pool.close()
        pool.unlink()
    return sink.results, stats, runs


@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_reused_tiles_cost_no_inference_and_keep_counts_bit_identical(
        tmp_path: Path, engine, overlap: float) -> None:
    bg = background()
    # 0-4 static, 5-9 a person walking, 10-14 static again (the person stays), 15 reconnect
    frames = [bg] * 5 + [with_person(bg, 100 + 40 * i, 60) for i in range(5)] + \
        [with_person(bg, 260, 60)] * 6
    sessions = [1] * 15 + [2]
    off, _, runs_off = _run(tmp_path, engine, frames, False, overlap, sessions)
    on, stats, runs_on = _run(tmp_path, engine, frames, True, overlap, sessions)
    n = len(frames)
    assert [r.frame_index for r in on] == [r.frame_index for r in off] == list(range(n))
    lay = TileLayout.plan(H, W, engine.window, engine.block_size, overlap)
    assert runs_off == n * lay.count and stats["tiles"] == n * lay.count
    assert runs_on == n * lay.count - stats["tiles_reused"]
    reused = [len(r.reused_tiles or ()) for r in on]
    assert reused[0] == 0 and reused[15] == 0  # first frame, and the reconnect: all counted
    assert all(k == lay.count for k in reused[1:5])  # static: every tile reused
    assert all(k == lay.count for k in reused[11:15])
    assert all(0 < k < lay.count for k in reused[5:10]), str(reused)  # the walker's tiles ran
    assert off[0].reused_tiles is None and on[0].tiles == lay.count
    # bit for bit where nothing changed (every tile reused: the maps of the frame they were
    # counted on, which had the same pixels)
    for i in range(1, 5):
        assert on[i].raw_count == off[i].raw_count
        assert np.array_equal(on[i].raw_density.map, off[i].raw_density.map)
    for i in range(10, 15):  # the walker stopped at frame 9: its map, kept
        assert np.array_equal(on[i].raw_density.map, on[9].raw_density.map)
    # elsewhere the tiles that ran shared a batch with other tiles than without the gate, which
    # moves a float's last bits (as batching several cameras together does)
    assert [r.raw_count for r in on] == pytest.approx([r.raw_count for r in off], rel=1e-6)
    assert on[3].model == "tiny"


@pytest.mark.parametrize(("url", "enabled", "gated"), [
    ("rtsp://cam/1", None, True),            # default: on for live sources ...
    ("RTSP://cam/1", None, True),
    ("https://cdn/live.m3u8", None, True),
    ("lobby.mp4", None, False),              # ... off for files
    ("rtsp://cam/1", False, False),          # an explicit choice wins either way
    ("lobby.mp4", True, True),
])
def test_motion_gate_default_follows_the_source(tmp_path: Path, url: str, enabled: bool | None,
                                                gated: bool) -> None:
    gate = {} if enabled is None else {"enabled": enabled}
    cfg = config_from_dict({"cameras": {"a": {"url": url, "motion_gate": gate}},
                            "model": {"random_init": "ebc-tiny-rn"}}, base_dir=tmp_path)
    assert cfg.cameras["a"].motion_gated is gated
