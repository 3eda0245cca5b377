"""Engine throughput per backend and precision, measured the same way for all of them.

Each engine runs full batches of ``batch`` tiles at the given window: warm-up batches first, then
``iters`` timed batches; tiles/s is ``batch / median batch time``. INT8 rows are calibrated on
frames of a video (default: the shipped demo clip) and carry the per-frame count deviation
against fp32 on held-back frames, from the same code path as ``crowdstream calibrate int8``.

Example::

    rows = bench_source("model.pt", label="demo", combos=[("torch", "fp32"), ("onnx", "fp32")],
                        batch=8, iters=5, threads=2)
    print(format_table(rows))
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends import load_engine
from engines.backends.base import Engine, EngineError
from engines.log import get_logger

log = get_logger("bench")

DEMO_CLIP = Path(__file__).resolve().parent.parent / "configs" / "demo" / "mall_demo.mp4"


def time_engine(engine: Engine, *, batch: int, iters: int, warmup: int = 1,
                seed: int = 0) -> dict[str, Any]:
    """Median seconds per full batch and tiles/s of ``engine`` on random tiles."""
    x = np.random.default_rng(seed).random((batch, 3, *engine.window), dtype=np.float32)
    for _ in range(warmup):
        engine.run(x)
    times = []
    cpu = []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        engine.run(x)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    med_cpu = statistics.median(cpu)
    # CPU seconds (all threads of this process) per batch: on a shared, loaded machine wall
    # time mostly measures the other processes; CPU time is what the engine itself needs.
    return {"batch_s": med, "tiles_per_s": batch / med, "iters": iters,
            "batch_s_min": min(times), "batch_s_max": max(times),
            "batch_cpu_s": med_cpu, "tiles_per_cpu_s": batch / med_cpu if med_cpu > 0 else None}


def tiles_per_frame(engine: Engine, height: int, width: int, overlap: float = 0.0) -> int:
    """How many windows the pipeline cuts from one ``height x width`` frame for ``engine``."""
    from engines.tiling import TileLayout

    return TileLayout.plan(height, width, window=engine.window, block=engine.block_size,
                           overlap=overlap).count


def machine() -> str:
    """One line naming the CPU, core count and load, for results tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f}"


def _int8_engine(fp32_engine: Engine, *, frames: int, threads: int | None, batch: int,
                 video: Path, tmp: Path, ops: tuple[str, ...] | None = None
                 ) -> tuple[Engine, dict[str, Any]]:
    """Calibrate ``fp32_engine``'s file on ``frames`` frames of ``video``; (engine, report)."""
    from calibrate.int8 import Int8Options, calibrate_int8, collect_frames
    from engines.video import VideoSource

    @dataclass(frozen=True)
    class _Camera(VideoSource):
        enabled: bool = True

    got = collect_frames({"bench": _Camera(str(video))}, frames)
    opts = Int8Options(frames=frames, holdout=0.5, max_deviation=float("inf"),
                       max_calibration_tiles=16, threads=threads)
    if ops:
        opts.op_types = tuple(ops)
    src = Path(fp32_engine.description["engine_file"])
    result = calibrate_int8(src, tmp / (src.stem + "-int8.onnx"), got, opts, max_batch=batch)
    assert result.engine_path is not None
    engine = load_engine(str(result.engine_path), max_batch=batch, threads=threads)
    return engine, result.report


def bench_source(source: str | None, *, label: str, combos: list[tuple[str, str]], batch: int,
                 iters: int, window: tuple[int, int] | None = None,
                 random_init: str | None = None, threads: int | None = None,
                 warmup: int = 1, int8_frames: int = 8, video: Path = DEMO_CLIP,
                 cache_dir: str | None = None, device: str = "cpu",
                 int8_ops: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of (model, backend, precision, tiles/s, ...) for each (backend, precision) combo."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="crowdstream-bench-") as tmpdir:
        tmp = Path(tmpdir)
        cache = cache_dir or str(tmp / "engines")
        engines: dict[tuple[str, str], Engine] = {}
        for backend, precision in combos:
            row: dict[str, Any] = {"model": label, "backend": backend, "precision": precision,
                                   "batch": batch}
            try:
                if precision == "int8":
                    base = engines.get(("onnx", "fp32")) or load_engine(
                        source, backend="onnx", max_batch=batch, window=window,
                        random_init=random_init, cache_dir=cache, threads=threads)
                    engine, report = _int8_engine(base, frames=int8_frames, threads=threads,
                                                  batch=batch, video=video, tmp=tmp,
                                                  ops=int8_ops)
                    if int8_ops:
                        row["precision"] = f"int8 ({'/'.join(int8_ops)})"
                    row.update(count_deviation=report["relative_deviation"],
                               count_mae=report["mae"], count_max=report["max"],
                               deviation_frames=report["frames"])
                else:
                    engine = load_engine(source, backend=backend, precision=precision,
                                         device=device, max_batch=batch, window=window,
                                         random_init=random_init, cache_dir=cache,
                                         threads=threads)
                engines[(backend, precision)] = engine
                row["window"] = "x".join(str(v) for v in engine.window)
                row.update(time_engine(engine, batch=batch, iters=iters, warmup=warmup))
                row["tiles_per_1080p"] = tiles_per_frame(engine, 1080, 1920)
                row["frames_per_s_1080p"] = row["tiles_per_s"] / row["tiles_per_1080p"]
                log.info("bench_row", model=label, backend=backend, precision=precision,
                         tiles_per_s=round(row["tiles_per_s"], 2))
            except EngineError as e:
                row["error"] = str(e)
                log.warning("bench_skipped", model=label, backend=backend, precision=precision,
                            reason=str(e))
            rows.append(row)
        for e in engines.values():
            e.close()
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    by = {(r["backend"], r["precision"]): r for r in rows if "tiles_per_s" in r}
    ort = by.get(("onnx", "fp32"))
    eager = by.get(("torch", "fp32"))
    for r in rows:
        if "tiles_per_s" not in r:
            continue
        for name, ref in (("vs_onnx_fp32", ort), ("vs_torch_fp32", eager)):
            if ref:
                r[name] = r["tiles_per_s"] / ref["tiles_per_s"]
                if r.get("tiles_per_cpu_s") and ref.get("tiles_per_cpu_s"):
                    r[name + "_cpu"] = r["tiles_per_cpu_s"] / ref["tiles_per_cpu_s"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows (ratios side by side)."""
    head = ("| model | backend | precision | window | batch | s/batch wall (median) | tiles/s "
            "wall | tiles per CPU-s | 1080p frames/s wall | × torch fp32 (wall / CPU) "
            "| × ORT fp32 (wall / CPU) | count deviation (held-back frames) |")
    lines = [head, "|" + "---|" * 12]
    nan = float("nan")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | | {r['batch']} "
                         f"| not run: {r['error'][:120]} | | | | | | |")
            continue
        dev = (f"{r['count_deviation']:.2%} rel, MAE {r['count_mae']:.2f} "
               f"({r['deviation_frames']} frames)" if "count_deviation" in r else "")
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['window']} | {r['batch']} "
            f"| {r['batch_s']:.3f} | {r['tiles_per_s']:.2f} | {r.get('tiles_per_cpu_s') or nan:.2f} "
            f"| {r['frames_per_s_1080p']:.3f} ({r['tiles_per_1080p']} tiles) "
            f"| {r.get('vs_torch_fp32', nan):.2f} / {r.get('vs_torch_fp32_cpu', nan):.2f} "
            f"| {r.get('vs_onnx_fp32', nan):.2f} / {r.get('vs_onnx_fp32_cpu', nan):.2f} | {dev} |")
    return "\n".join(lines)
