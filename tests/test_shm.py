"""FrameRing / BatchPool across real spawned processes: order, policies, drops, end marker."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from pipeline.shm import (
    LATENCY_BUCKETS,
    BatchPool,
    EndOfStream,
    FrameMeta,
    FrameRing,
    PoolSet,
    RunSegments,
    ShmSpaceError,
    ValueBoard,
    check_shm_space,
    run_prefix,
)

H, W = 36, 64


def _frame(i: int) -> np.ndarray:
    f = np.empty((H, W, 3), np.uint8)
    f[...] = i % 251
    f[0, 0] = (i % 256, (i // 256) % 256, 7)
    return f


def _producer(handle, n: int, end: bool) -> None:
    ring = FrameRing.attach(handle)
    for i in range(n):
        assert ring.put(_frame(i), FrameMeta("cam", i, i / 25.0, time.time(), H, W), timeout=10)
    if end:
        ring.put_end("file finished")
    ring.close()


@pytest.fixture
def ring_name() -> str:
    name = run_prefix() + "test"
    yield name
    assert not os.path.exists(f"/dev/shm/{name}"), "segment left behind"


def test_lossless_across_processes_in_order(ring_name: str) -> None:
    ring = FrameRing.create(ring_name, slots=3, max_height=H, max_width=W, policy="lossless")
    n = 200
    p = mp.get_context("spawn").Process(target=_producer, args=(ring.handle(), n, True))
    p.start()
    seen = []
    try:
        while True:
            got = ring.get(timeout=20)
            assert got is not None, "timed out"
            if isinstance(got, EndOfStream):
                assert got.reason == "file finished"
                break
            slot, meta, view = got
            assert view.shape == (H, W, 3)
            assert int(view[0, 0, 0]) + 256 * int(view[0, 0, 1]) == meta.frame_index
            assert int(view[5, 5, 2]) == meta.frame_index % 251
            assert meta.pts == pytest.approx(meta.frame_index / 25.0)
            assert meta.camera == "cam"
            seen.append(meta.frame_index)
            ring.release(slot)
        p.join(10)
        assert p.exitcode == 0
        assert seen == list(range(n))
        assert ring.drops == 0
        assert isinstance(ring.get(timeout=0), EndOfStream)  # the end is sticky
    finally:
        ring.close()
        ring.unlink()


def test_latest_counts_drops_exactly(ring_name: str) -> None:
    ring = FrameRing.create(ring_name, slots=4, max_height=H, max_width=W, policy="latest")
    p = mp.get_context("spawn").Process(target=_producer, args=(ring.handle(), 50, True))
    p.start()
    p.join(30)
    try:
        assert p.exitcode == 0
        assert ring.drops == 46 and ring.depth == 4
        got = []
        while not isinstance(item := ring.get(timeout=1), EndOfStream):
            got.append(item[1].frame_index)
            ring.release(item[0])
        assert got == [46, 47, 48, 49]
        # a reader holding slots: latest still never blocks while unread frames exist
        held = [ring.get(timeout=0)]
        assert isinstance(held[0], EndOfStream)
    finally:
        ring.close()
        ring.unlink()


def test_latest_with_reader_holding_slots(ring_name: str) -> None:
    ring = FrameRing.create(ring_name, slots=3, max_height=H, max_width=W, policy="latest")
    try:
        for i in range(3):
            ring.put(_frame(i), FrameMeta("c", i, None, 0.0, H, W))
        a = ring.get(0)
        b = ring.get(0)
        for i in range(3, 8):  # only one slot circulates: frames 2..6 dropped one by one
            assert ring.put(_frame(i), FrameMeta("c", i, None, 0.0, H, W), timeout=0)
        assert ring.drops == 5
        last = ring.get(0)
        assert last[1].frame_index == 7 and last[1].pts is None
        # every slot held by readers: latest waits and gives up on timeout
        assert ring.put(_frame(9), FrameMeta("c", 9, None, 0.0, H, W), timeout=0.05) is False
        assert ring.drops == 6  # ... and that frame counts as dropped
        st = ring.stats()
        # 10 frames offered: 9 written, 1 refused; 5 of the written were reclaimed unread
        assert (st["puts"], st["refused"], st["drops"]) == (8, 1, 6)
        assert st["puts"] + st["refused"] == st["gets"] + st["drops"] + st["depth"]
        for s in (a[0], b[0], last[0]):
            ring.release(s)
    finally:
        ring.close()
        ring.unlink()


def test_lossless_put_times_out_when_full(ring_name: str) -> None:
    ring = FrameRing.create(ring_name, slots=2, max_height=H, max_width=W, policy="lossless")
    try:
        assert ring.put(_frame(0), FrameMeta("c", 0, 0.0, 0.0, H, W))
        assert ring.put(_frame(1), FrameMeta("c", 1, 0.0, 0.0, H, W))
        t = time.monotonic()
        assert ring.put(_frame(2), FrameMeta("c", 2, 0.0, 0.0, H, W), timeout=0.1) is False
        assert time.monotonic() - t >= 0.09
        assert ring.drops == 0 and ring.depth == 2
        assert ring.last_frame_index == 1
        assert ring.get(timeout=0.01)[1].frame_index == 0
    finally:
        ring.close()
        ring.unlink()


def test_bad_frames_and_recovery(ring_name: str) -> None:
    ring = FrameRing.create(ring_name, slots=2, max_height=H, max_width=W, policy="lossless")
    try:
        with pytest.raises(ValueError, match="larger than the ring"):
            ring.put(np.zeros((H + 1, W, 3), np.uint8), FrameMeta("c", 0, 0, 0, H + 1, W))
        with pytest.raises(ValueError, match="BGR uint8"):
            ring.put(np.zeros((H, W), np.uint8), FrameMeta("c", 0, 0, 0, H, W))
        ring.put(_frame(0), FrameMeta("c", 0, 0.0, 0.0, H, W))
        ring.put(_frame(1), FrameMeta("c", 1, 0.0, 0.0, H, W))
        ring.get(0)
        ring.get(0)
        # both slots held by a reader that died: the supervisor gives them back
        assert ring.recover_readers() == 2
        assert ring.put(_frame(2), FrameMeta("c", 2, 0.0, 0.0, H, W), timeout=0)
        assert ring.stats()["lost"] == 2
    finally:
        ring.close()
        ring.unlink()


def test_shm_space_error_names_the_need() -> None:
    with pytest.raises(ShmSpaceError, match=r"needs .* MiB"):
        check_shm_space(1 << 60, "test run")


def test_batch_pool_requeue_keeps_order() -> None:
    name = run_prefix() + "batch"
    pool = BatchPool.create(name, slots=3, max_batch=2, window=(16, 16), block=8)
    try:
        for k in range(3):
            s = pool.acquire(timeout=0)
            pool.tiles(s)[:2] = k
            pool.desc(s)["seq"][:2] = k
            pool.submit(s, 2)
        assert pool.acquire(timeout=0) is None
        first = pool.take_infer(0)
        assert pool.desc(first)["seq"][0] == 0
        assert pool.requeue_inference() == 1  # the inference process died holding batch 0
        order = []
        while (s := pool.take_infer(0)) is not None:
            order.append(int(pool.desc(s)["seq"][0]))
            pool.outputs(s)[:2] = float(pool.tiles(s)[0, 0, 0, 0])
            pool.done_infer(s)
        assert order == [0, 1, 2]
        post = [pool.take_post(0) for _ in range(3)]
        assert [float(pool.outputs(s)[0, 0, 0, 0]) for s in post] == [0.0, 1.0, 2.0]
        for s in post:
            pool.release(s)
        assert pool.stats()["requeued"] == 1
    finally:
        pool.close()
        pool.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")


def _submit_later(handle, delay: float) -> None:
    pool = BatchPool.attach(handle)
    time.sleep(delay)
    s = pool.acquire(timeout=1)
    pool.desc(s)["seq"][:1] = 7
    pool.submit(s, 1)
    pool.close()


def test_pool_set_serves_every_model_in_order_and_requeues_each() -> None:
    """Two models' pools served by one process: round robin (a busy model cannot starve the
    other), each pool in its own order, a batch of reused rows only (k = 0) passes through,
    a dead inference process's batches are requeued in every pool, and a wait on all pools wakes
    when another process submits to any of them."""
    prefix = run_prefix()
    wake = PoolSet.wake_pair()
    handles = [BatchPool.prepare(f"{prefix}b{i}", 4, wake) for i in range(2)]
    pools = [BatchPool.create_from(h, 2, (16, 16), 8, rows=8) for h in handles]
    ps = PoolSet(pools)
    try:
        assert pools[0].max_rows == 8 and pools[0].max_batch == 2
        for k in range(3):  # model 0 is busy: 3 batches; model 1 has 1
            s = pools[0].acquire(timeout=0)
            pools[0].desc(s)["seq"][:2] = k
            pools[0].submit(s, 2)
        s = pools[1].acquire(timeout=0)
        pools[1].desc(s)["seq"][:5] = 10
        pools[1].submit(s, 5, k=0)  # five reused tiles, none to run
        with pytest.raises(ValueError):
            pools[1].submit(pools[1].acquire(timeout=0), 3, k=3)  # more tiles than max_batch
        got = [ps.take_infer(0) for _ in range(2)]
        assert [g[0] for g in got] == [0, 1]  # round robin, not model 0's queue first
        assert pools[1].count(got[1][1]) == 5 and pools[1].tile_count(got[1][1]) == 0
        assert pools[0].requeue_inference() + pools[1].requeue_inference() == 2  # died
        order = []
        while (g := ps.take_infer(0)) is not None:
            i, slot = g
            order.append((i, int(pools[i].desc(slot)["seq"][0])))
            pools[i].done_infer(slot)
        assert [o for o in order if o[0] == 0] == [(0, 0), (0, 1), (0, 2)]
        assert [o for o in order if o[0] == 1] == [(1, 10)]
        while (g := ps.take_post(0)) is not None:
            pools[g[0]].release(g[1])
        st = pools[1].stats()
        assert (st["batches"], st["tiles"], st["reused"]) == (0, 0, 5)  # never ran
        # another process submits to model 1 while this one waits on both
        ctx = mp.get_context("spawn")
        p = ctx.Process(target=_submit_later, args=(handles[1], 0.5))
        p.start()
        t0 = time.monotonic()
        g = ps.take_infer(20.0)
        assert g is not None and g[0] == 1 and time.monotonic() - t0 < 15.0
        p.join(10)
    finally:
        for pool in pools:
            pool.close()
            pool.unlink()


def test_reserve_commit_writes_in_place(ring_name: str) -> None:
    ring = FrameRing.create(ring_name, slots=2, max_height=H, max_width=W, policy="latest")
    try:
        slot, view = ring.reserve(10, 20, timeout=0)
        view[...] = 42
        ring.commit(slot, FrameMeta("c", 5, 0.2, 1.0, 10, 20))
        s2, v2 = ring.reserve(10, 20, timeout=0)
        ring.abort(s2)
        got = ring.get(timeout=0)
        assert got[1].frame_index == 5 and got[2].shape == (10, 20, 3) and (got[2] == 42).all()
        with pytest.raises(ValueError, match="not reserved"):
            ring.commit(got[0], FrameMeta("c", 6, 0.2, 1.0, 10, 20))
        with pytest.raises(ValueError, match="does not fit"):
            ring.reserve(H + 1, W)
        ring.release(got[0])
        assert ring.drops == 0
    finally:
        ring.close()
        ring.unlink()


def _die_holding_lock(handle) -> None:
    ring = FrameRing.attach(handle)
    ring._q.lock.acquire()
    os._exit(9)  # like SIGKILL inside a critical section


def test_lock_of_a_dead_process_is_broken(ring_name: str) -> None:
    ring = FrameRing.create(ring_name, slots=2, max_height=H, max_width=W, policy="lossless")
    try:
        assert ring.break_stale_lock(0.05) is False  # a free lock is left alone
        p = mp.get_context("spawn").Process(target=_die_holding_lock, args=(ring.handle(),))
        p.start()
        p.join(30)
        assert p.exitcode == 9
        assert ring.break_stale_lock(0.2) is True
        assert ring.put(_frame(0), FrameMeta("c", 0, 0.0, 0.0, H, W), timeout=1)
        assert ring.get(timeout=1)[1].frame_index == 0
    finally:
        ring.close()
        ring.unlink()


def test_latency_histogram_counting_span_and_value_board() -> None:
    segs = RunSegments()
    try:
        ring = segs.frame_ring("r0", 2, H, W, "lossless")
        c = ring.counters
        assert c.counting_span() is None
        for lat in (0.005, 0.01, 0.3, 75.0):  # the first is in the 10 ms bucket, 75 s in +Inf
            c.record_result(lat)
        counts, total = c.latency_histogram()
        assert len(counts) == len(LATENCY_BUCKETS) + 1
        assert counts[0] == 2 and counts[LATENCY_BUCKETS.index(0.5)] == 1 and counts[-1] == 1
        assert total == pytest.approx(75.315) and c.stats()["emitted"] == 4
        first, last = c.counting_span()
        assert last - first == pytest.approx(0.005, abs=0.05)  # from the first frame's capture
        board = segs.value_board("values", [("people", "a"), ("zone_people", "a", "door")])
        assert board.read() == {}  # nothing written yet: no value, not 0
        child = ValueBoard.attach(board.handle())
        child.set(child.index[("people", "a")], 12.5)
        assert board.read() == {("people", "a"): 12.5}
        child.close()
    finally:
        assert segs.unlink_all() == []
