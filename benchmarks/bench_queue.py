"""Benchmark 2: shared-memory FrameRing vs multiprocessing.Queue for 1080p BGR frames.

A spawned producer sends frames to the parent three ways, measured side by side in one run:
``multiprocessing.Queue`` (frames pickled), our ``FrameRing`` read in place (zero-copy view), and
``FrameRing`` with the consumer copying each frame out; plus an in-process memcpy of the same
frames as the upper limit. Prints frames/s, GB/s and the ring / Queue ratio (target >= 25x).

Run::

    nice -n 10 .venv/bin/python benchmarks/bench_queue.py [--frames 600] [--queue-frames 150] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.process import StopFlag  # noqa: E402
from pipeline.shm import EndOfStream, FrameMeta, FrameRing, run_prefix  # noqa: E402

H, W = 1080, 1920
FRAME_BYTES = H * W * 3


def _frames(k: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(k)]


def _queue_producer(q: mp.Queue, n: int) -> None:
    frames = _frames()
    q.put("ready")
    for i in range(n):
        q.put((i, frames[i % len(frames)]))
    q.put(None)


def _ring_producer(handle: object, n: int, go: object) -> None:
    ring = FrameRing.attach(handle)
    frames = _frames()
    go.wait()  # type: ignore[attr-defined]
    for i in range(n):
        ring.put(frames[i % len(frames)], FrameMeta("bench", i, None, time.time(), H, W))
    ring.put_end()
    ring.close()


def bench_queue(n: int) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue(maxsize=8)
    p = ctx.Process(target=_queue_producer, args=(q, n))
    p.start()
    assert q.get() == "ready"
    t0 = time.perf_counter()
    got = 0
    while (item := q.get()) is not None:
        _, frame = item
        assert frame.shape == (H, W, 3)
        got += 1
    dt = time.perf_counter() - t0
    p.join()
    assert got == n
    return n / dt


def bench_ring(n: int, copy_out: bool) -> float:
    ctx = mp.get_context("spawn")
    ring = FrameRing.create(run_prefix() + "bench", 8, H, W, "lossless")
    go = StopFlag(ctx)  # the house's one cross-process flag: here it says "go"
    p = ctx.Process(target=_ring_producer, args=(ring.handle(), n, go))
    p.start()
    time.sleep(1.0)  # let the child start and build its frames before the clock runs
    out = np.empty((H, W, 3), np.uint8)
    try:
        go.set()
        t0 = time.perf_counter()
        got = 0
        while True:
            item = ring.get(timeout=30)
            if item is None:
                raise RuntimeError("producer stalled")
            if isinstance(item, EndOfStream):
                break
            slot, meta, view = item
            assert meta.frame_index == got
            if copy_out:
                np.copyto(out, view)
            got += 1
            ring.release(slot)
        dt = time.perf_counter() - t0
        p.join()
        assert got == n
        return n / dt
    finally:
        ring.close()
        ring.unlink()


def bench_memcpy(n: int) -> float:
    frames = _frames()
    out = np.empty((H, W, 3), np.uint8)
    t0 = time.perf_counter()
    for i in range(n):
        np.copyto(out, frames[i % len(frames)])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=600, help="frames through the ring")
    ap.add_argument("--queue-frames", type=int, default=150, help="frames through mp.Queue")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; the variants alternate within each round and the medians are "
                         "reported (a shared machine's load swings between runs)")
    a = ap.parse_args()
    names = ["multiprocessing.Queue (pickled)", "FrameRing, read in place",
             "FrameRing, consumer copies out", "in-process memcpy (upper limit)"]
    runs: list[list[float]] = [[] for _ in names]
    for _ in range(a.rounds):
        runs[0].append(bench_queue(a.queue_frames))
        runs[1].append(bench_ring(a.frames, copy_out=False))
        runs[2].append(bench_ring(a.frames, copy_out=True))
        runs[3].append(bench_memcpy(a.frames))
    rows = [(n, float(np.median(r))) for n, r in zip(names, runs, strict=True)]
    ratios = [r / q for r, q in zip(runs[1], runs[0], strict=True)]
    print(f"per-round ring(in place)/Queue ratios: {', '.join(f'{x:.1f}' for x in ratios)}")
    print(f"1920x1080 BGR uint8 frames ({FRAME_BYTES / 1e6:.2f} MB); {platform.processor() or platform.machine()}, "
          f"{mp.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'transport':34s} {'frames/s':>10s} {'GB/s':>7s}")
    for name, fps in rows:
        print(f"{name:34s} {fps:10.1f} {fps * FRAME_BYTES / 1e9:7.2f}")
    q = rows[0][1]
    print(f"ratio ring(in place) / Queue (medians): {rows[1][1] / q:.1f}x  (target >= 25x)")
    print(f"ratio ring(copy out) / Queue: {rows[2][1] / q:.1f}x")
    print(f"ring(in place) / memcpy: {rows[1][1] / rows[3][1]:.2f}")


if __name__ == "__main__":
    main()
