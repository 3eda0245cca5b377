"""Benchmark 1: ingest fps vs raw PyAV decode of the same file to the same pixel format.

Side by side in one run, interleaved rounds (the machine is shared, so medians of alternating
rounds are fairer than one long run of each):

* ``raw``    -- PyAV alone in this process: open with ``thread_type='AUTO'``, decode,
                ``frame.to_ndarray(format='bgr24')``; nothing else.
* ``raw+copy`` -- the same plus one copy of each frame into a fixed buffer: what any ingest
                that hands frames on through ``FrameRing.put`` cannot go below.
* ``sws->slots`` (``--direct``) -- decode + libswscale writing straight into rotating
                shared-memory slots: the cost of ingest with a write-in-place ring API.
* ``ingest`` -- the real thing: ``run_ingest`` in a spawned process writing every frame into a
                ``lossless`` shared-memory ``FrameRing`` that this process reads and releases.

Both decode the file ``--passes`` times (the ingest loops it with ``loop: true``); fps is counted
from the first frame to the last, so process start-up is not part of either figure.
Fps is wall-clock and noisy on a shared machine; CPU ms per frame (all threads; for ingest the
ingest process plus the reader) is printed beside it. Target: ingest / raw >= 0.95.

Example::

    nice -n 10 .venv/bin/python benchmarks/bench_ingest.py --rounds 3 --passes 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import CameraConfig  # noqa: E402
from pipeline.process import ChildSpec, StopFlag, spawn_child  # noqa: E402
from pipeline.shm import EndOfStream, FrameRing  # noqa: E402

DEFAULT_FILE = REPO.parent / "shared" / "data" / "videos" / "street_1080p.mp4"


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_decode(path: str, frames: int, copy_out: bool = False) -> tuple[float, float]:
    """PyAV alone: decode + convert to BGR24, reopening the file until ``frames`` are done.
    Returns (fps, CPU ms per frame). ``copy_out`` adds one copy of each frame into a fixed
    buffer: the floor for anything that hands frames on through ``FrameRing.put``."""
    import av
    import numpy as np

    n = 0
    t0 = c0 = 0.0
    buf: np.ndarray | None = None
    while n < frames:
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for f in c.decode(s):
                img = f.to_ndarray(format="bgr24")
                if copy_out:
                    if buf is None:
                        buf = np.empty_like(img)
                    np.copyto(buf, img)
                del img
                n += 1
                if n == 1:
                    t0, c0 = time.perf_counter(), time.process_time()
                if n >= frames:
                    break
    return (frames - 1) / (time.perf_counter() - t0), \
        1000 * (time.process_time() - c0) / (frames - 1)


class DirectSws:
    """libswscale (PyAV's own copy, through ctypes) converting yuv420p frames to BGR24 straight
    into a caller's buffer -- what PyAV's ``reformat`` cannot do (it always allocates its output).

    Same algorithm and flags as ``to_ndarray(format="bgr24")`` (bilinear, automatic threads);
    the output is checked to be byte-identical before it is timed.
    """

    def __init__(self, width: int, height: int) -> None:
        import ctypes
        import glob

        import av

        libs = Path(av.__file__).resolve().parent.parent / "av.libs"
        util = ctypes.CDLL(glob.glob(str(libs / "libavutil-*.so*"))[0])
        self._sws = ctypes.CDLL(glob.glob(str(libs / "libswscale-*.so*"))[0])
        util.av_get_pix_fmt.restype = ctypes.c_int
        util.av_get_pix_fmt.argtypes = [ctypes.c_char_p]
        util.av_opt_set_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64,
                                        ctypes.c_int]
        self._sws.sws_alloc_context.restype = ctypes.c_void_p
        self._sws.sws_init_context.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        ptrs, ints = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)
        self._sws.sws_scale.argtypes = [ctypes.c_void_p, ptrs, ints, ctypes.c_int, ctypes.c_int,
                                        ptrs, ints]
        self._ctx = self._sws.sws_alloc_context()
        opts = {"srcw": width, "srch": height, "src_format": util.av_get_pix_fmt(b"yuv420p"),
                "dstw": width, "dsth": height, "dst_format": util.av_get_pix_fmt(b"bgr24"),
                "sws_flags": 2, "threads": 0}  # 2 = SWS_BILINEAR, PyAV's default
        for k, v in opts.items():
            if util.av_opt_set_int(self._ctx, k.encode(), v, 0) < 0:
                raise RuntimeError(f"libswscale rejected option {k}={v}")
        if self._sws.sws_init_context(self._ctx, None, None) < 0:
            raise RuntimeError("libswscale: sws_init_context failed")
        self._c = ctypes
        self.h, self.w = height, width

    def __call__(self, frame: Any, out: Any) -> None:
        c = self._c
        planes = frame.planes[:3]
        src = (c.c_void_p * 4)(*[p.buffer_ptr for p in planes], None)
        sstride = (c.c_int * 4)(*[p.line_size for p in planes], 0)
        dst = (c.c_void_p * 4)(out.ctypes.data, None, None, None)
        dstride = (c.c_int * 4)(self.w * 3, 0, 0, 0)
        if self._sws.sws_scale(self._ctx, src, sstride, 0, self.h, dst, dstride) != self.h:
            raise RuntimeError("sws_scale failed")


def direct_to_slots(path: str, frames: int) -> tuple[float, float]:
    """Decode + swscale straight into 8 rotating shared-memory slots: what ingest would cost
    with a write-in-place ring API (no ``put`` copy). (fps, CPU ms per frame)."""
    from multiprocessing import shared_memory

    import av
    import numpy as np

    with av.open(path) as c:
        f0 = next(c.decode(video=0))
        if f0.format.name != "yuv420p":
            raise RuntimeError(f"direct swscale variant needs yuv420p, got {f0.format.name}")
        conv = DirectSws(f0.width, f0.height)
        ref = f0.to_ndarray(format="bgr24")
        test = np.empty_like(ref)
        conv(f0, test)
        if not np.array_equal(test, ref):
            raise RuntimeError("direct swscale output differs from PyAV's to_ndarray")
    shm = shared_memory.SharedMemory(create=True, size=ref.nbytes * 8,
                                      name=f"csbench_{os.getpid()}_{os.urandom(3).hex()}")
    try:
        base = np.ndarray((ref.nbytes * 8,), np.uint8, buffer=shm.buf)
        slots = [base[i * ref.nbytes:(i + 1) * ref.nbytes].reshape(ref.shape) for i in range(8)]
        for sl in slots:
            sl[:] = 0  # fault the pages in, as a ring in steady state has them
        n = 0
        t0 = c0 = 0.0
        while n < frames:
            with av.open(path) as c:
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                for f in c.decode(s):
                    conv(f, slots[n % 8])
                    n += 1
                    if n == 1:
                        t0, c0 = time.perf_counter(), time.process_time()
                    if n >= frames:
                        break
        result = (frames - 1) / (time.perf_counter() - t0), \
            1000 * (time.process_time() - c0) / (frames - 1)
        del slots, base
    finally:
        shm.close()
        shm.unlink()
    return result


def ingest(path: str, frames: int, hw: tuple[int, int]) -> tuple[float, float]:
    """run_ingest in its own process into a lossless ring; this process drains the ring.
    Returns (fps, CPU ms per frame of the ingest process plus this reader)."""
    ctx = mp.get_context("spawn")
    ring = FrameRing.create(f"csbench_{os.getpid()}_{os.urandom(3).hex()}", 8, hw[0], hw[1],
                            "lossless")
    events = ctx.Queue()
    stop = StopFlag(ctx)
    cfg = CameraConfig(url=path, loop=True)
    p = spawn_child(ctx, ChildSpec("ingest-bench", "pipeline.ingest:run_ingest", stop),
                    "bench", cfg, ring.handle(), events, stop)
    n = 0
    t0 = c0 = r0 = 0.0
    try:
        while n < frames:
            got = ring.get(timeout=30)
            if got is None or isinstance(got, EndOfStream):
                raise RuntimeError(f"ingest ended early after {n} frames: {got}")
            ring.release(got[0])
            n += 1
            if n == 1:
                t0, c0, r0 = time.perf_counter(), _cpu_s(p.pid), time.process_time()
        dt = time.perf_counter() - t0
        cpu_child, cpu_reader = _cpu_s(p.pid) - c0, time.process_time() - r0
        cpu = cpu_child + cpu_reader
    finally:
        stop.set()
        p.join(10)
        if p.is_alive():
            p.kill()
        ring.close()
        ring.unlink()
        events.close()
    if os.environ.get("BENCH_VERBOSE"):
        print(f"  ingest process {1000 * cpu_child / (frames - 1):.2f} + reader "
              f"{1000 * cpu_reader / (frames - 1):.2f} CPU ms/frame")
    return (frames - 1) / dt, 1000 * cpu / (frames - 1)


def single_slice_copy(src: str, dst: Path, bitrate: int = 4_000_000) -> str:
    """Re-encode ``src`` as IP cameras send it: H.264, one slice per frame, no B-frames, 4 Mbps
    (libx264's default of several slices per frame decodes faster than real camera streams)."""
    import av

    with av.open(src) as i, av.open(str(dst), "w") as o:
        s = i.streams.video[0]
        out = o.add_stream("libx264", rate=s.average_rate or 25)
        out.width, out.height, out.pix_fmt = s.codec_context.width, s.codec_context.height, \
            "yuv420p"
        out.bit_rate = bitrate
        out.options = {"preset": "veryfast", "x264-params": "slices=1:sliced-threads=0",
                       "g": "50", "bf": "0"}
        for f in i.decode(s):
            for p in out.encode(f.reformat(format="yuv420p")):
                o.mux(p)
        for p in out.encode():
            o.mux(p)
    return str(dst)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", default=str(DEFAULT_FILE), help="video file (default: %(default)s)")
    ap.add_argument("--passes", type=int, default=3, help="decode the file this many times")
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw/ingest rounds")
    ap.add_argument("--single-slice", action="store_true",
                    help="first re-encode the file as a camera would send it (one slice per "
                         "frame, 4 Mbps) into a temporary folder, and benchmark that")
    ap.add_argument("--direct", action="store_true",
                    help="also time decode + libswscale writing straight into shared-memory "
                         "slots (what a write-in-place ring API would allow)")
    ap.add_argument("--json", action="store_true", help="print one JSON line as well")
    a = ap.parse_args()
    if not Path(a.file).is_file():
        print(f"video not found: {a.file} (pass --file, or provide ../shared/data)",
              file=sys.stderr)
        return 2
    if a.single_slice:
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="cs_bench_ingest_"))
        try:
            a.file = single_slice_copy(a.file, tmp / (Path(a.file).stem + "_1slice.mp4"))
            return run(a)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return run(a)


def run(a: argparse.Namespace) -> int:
    import av

    with av.open(a.file) as c:
        s = c.streams.video[0]
        hw = (s.codec_context.height, s.codec_context.width)
        per_pass = s.frames or sum(1 for _ in c.decode(s))
    frames = per_pass * a.passes
    print(f"file {a.file}: {hw[1]}x{hw[0]}, {per_pass} frames/pass, {frames} frames per round, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    rows: dict[str, list[tuple[float, float]]] = {"raw": [], "raw+copy": [], "ingest": []}
    if a.direct:
        rows["sws->slots"] = []
    raw_decode(a.file, min(per_pass, 20))  # warm the page cache and PyAV's imports
    for r in range(a.rounds):
        rows["raw"].append(raw_decode(a.file, frames))
        rows["ingest"].append(ingest(a.file, frames, hw))
        rows["raw+copy"].append(raw_decode(a.file, frames, copy_out=True))
        if a.direct:
            rows["sws->slots"].append(direct_to_slots(a.file, frames))
        print(f"round {r + 1}: " + "   ".join(
            f"{k} {v[-1][0]:6.1f} fps {v[-1][1]:5.2f} cpu-ms/frame" for k, v in rows.items()))
    med = {k: (statistics.median(f for f, _ in v), statistics.median(c for _, c in v))
           for k, v in rows.items()}
    ratios = [i[0] / r[0] for i, r in zip(rows["ingest"], rows["raw"], strict=True)]
    for k, (fps, cpu) in med.items():
        print(f"median {k:9s} {fps:7.1f} fps  {cpu:5.2f} CPU ms/frame")
    print(f"ingest/raw: fps ratio of medians {med['ingest'][0] / med['raw'][0]:.3f}, median "
          f"per-round fps ratio {statistics.median(ratios):.3f}, CPU-per-frame ratio "
          f"{med['raw'][1] / med['ingest'][1]:.3f} (target >= 0.95)")
    print(f"ingest/(raw+copy): fps {med['ingest'][0] / med['raw+copy'][0]:.3f}, CPU "
          f"{med['raw+copy'][1] / med['ingest'][1]:.3f}  (raw+copy = decode, convert and one "
          f"copy per frame: the floor for a ring fed by put)")
    if a.direct:
        d = med["sws->slots"]
        print(f"sws->slots/raw: fps {d[0] / med['raw'][0]:.3f}, CPU {med['raw'][1] / d[1]:.3f}  "
              f"(decode + swscale straight into shared-memory slots: a write-in-place ring)")
    if a.json:
        print(json.dumps({"file": a.file, "frames": frames, **rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
