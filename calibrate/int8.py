"""INT8 engines calibrated on frames from the user's own cameras, with a report of what it cost.

Steps (``crowdstream calibrate int8 CONFIG`` runs them):

1. :func:`collect_frames` takes frames from the configured cameras or files, spread over time
   (files: evenly spaced seeks over the whole duration; live sources: one frame every
   ``live_interval_s``) and over cameras (an equal share each).
2. The frames are split: a held-back share is only used for the report; the rest is tiled with
   :class:`engines.tiling.TileLayout` exactly as the pipeline tiles, and those tiles calibrate.
3. ONNX Runtime static quantisation, QDQ format, on CPU, quantising only ``MatMul``, ``Gemm`` and
   ``Conv`` (ViT softmax/layer-norm paths stay fp32: quantising everything cost ViT-B/16 12.6%
   relative L2 against 3.3%; ``quant_pre_process`` is skipped as it fails on ViT exports).
4. Report on the held-back frames: per-frame count deviation INT8 vs FP32 (MAE, max, relative)
   and the speedup (tiles/s). An engine whose relative deviation exceeds ``max_deviation`` is
   not written; the error says by how much it missed.
5. Where TensorRT and a CUDA device exist, a TensorRT INT8 plan plus calibration cache is built
   from the same calibration tiles.

The caller passes the model settings and cameras in (``calibrate`` never imports ``pipeline``;
``pipeline.commands.calibrate_int8`` hands over the loaded run config's sections).

Example::

    from calibrate.int8 import Int8Options, calibrate_from_config
    cfg = load_config("configs/demo.yaml")          # pipeline.config, in the caller
    result = calibrate_from_config(cfg.model, cfg.cameras, cfg.model.engine_cache_dir,
                                   Int8Options(frames=24))
    print(result.report["relative_deviation"], result.engine_path)
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engines.backends.base import EngineError
from engines.log import get_logger
from engines.video import SourceSettings, is_live

if TYPE_CHECKING:
    from engines.backends.base import Engine

log = get_logger("calibrate.int8")

QUANT_OPS = ("MatMul", "Gemm", "Conv")


class CameraSource(SourceSettings, Protocol):
    """A camera frames are collected from (``pipeline.config.CameraConfig`` is one)."""

    enabled: bool


class ModelSettings(Protocol):
    """The model section calibration reads (``pipeline.config.ModelConfig`` is one)."""

    checkpoint: str | None
    engine: str | None
    random_init: str | None
    batch: int
    window: tuple[int, int] | None
    overlap: float
    device: str


class Int8Refused(EngineError):
    """The INT8 engine deviates more than allowed; nothing was written except the report."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Int8Options:
    """How to calibrate. ``holdout`` is the share of frames kept for the report only."""

    frames: int = 32
    holdout: float = 0.25
    max_deviation: float = 0.02  # relative: sum |int8 - fp32| / sum |fp32| over held-back frames
    max_calibration_tiles: int = 96
    # percentile (99.999th): on a trained Mall model minmax changed counts by 3.2%, percentile
    # by 1.9% (outlier activations stretch minmax ranges).
    method: str = "percentile"  # percentile | minmax | entropy
    per_channel: bool = True
    # uint8 activations x int8 weights: every Conv fuses to QLinearConv on x86 (with int8
    # activations ONNX Runtime left a third of a ResNet's convolutions in float).
    activations: str = "uint8"  # uint8 | int8
    live_interval_s: float = 2.0
    live_timeout_s: float = 120.0
    threads: int | None = None
    text_prompt: str | None = None
    seed: int = 0
    op_types: tuple[str, ...] = QUANT_OPS
    # Keep the last N quantisable ops (nearest the output) in float, e.g. the projection into
    # the text-feature space whose errors the logit scale magnifies.
    float_last: int = 0

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2 (some calibrate, some are held back), got "
                             f"{self.frames}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be a share in (0, 1), got {self.holdout}")
        if self.max_deviation < 0:
            raise ValueError(f"max_deviation must be >= 0, got {self.max_deviation}")
        if self.method not in ("minmax", "entropy", "percentile"):
            raise ValueError(f"method must be minmax, entropy or percentile, got {self.method!r}")
        if self.float_last < 0:
            raise ValueError(f"float_last must be >= 0, got {self.float_last}")
        if self.activations not in ("int8", "uint8"):
            raise ValueError(f"activations must be int8 or uint8, got {self.activations!r}")


@dataclass
class CalibFrame:
    """One collected frame: RGB uint8 (h, w, 3), where it came from and when (source seconds)."""

    camera: str
    t: float
    rgb: np.ndarray


@dataclass
class Int8Result:
    """What :func:`calibrate_int8` produced. ``engine_path`` is None when refused."""

    report: dict[str, Any]
    engine_path: Path | None
    report_path: Path | None = None
    tensorrt_plan: Path | None = None
    notes: list[str] = field(default_factory=list)


# -- frame collection ---------------------------------------------------------------------------

def _sample_file(name: str, cam: SourceSettings, k: int) -> list[CalibFrame]:
    """``k`` frames evenly spread over a file's duration (seek, decode the next frame)."""
    from engines.video import iter_video_frames, open_source

    container = open_source(cam)
    try:
        stream = container.streams.video[0]
        duration = (float(container.duration) / 1e6 if container.duration else
                    float(stream.duration * stream.time_base) if stream.duration else 0.0)
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        if duration <= 0:
            # No duration in the header: take the first k frames, one per decoded frame.
            out = []
            for frame in iter_video_frames(container, stall_timeout_s=None):
                out.append(CalibFrame(name, float(frame.time or 0.0),
                                      frame.to_ndarray(format="rgb24")))
                if len(out) == k:
                    break
            return out
        out = []
        for i in range(k):
            target = start + (i + 0.5) * duration / k
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
            for frame in iter_video_frames(container, stall_timeout_s=None):
                t = float(frame.time) if frame.time is not None else target
                if t + 1e-3 >= target:
                    out.append(CalibFrame(name, t, frame.to_ndarray(format="rgb24")))
                    break
        return out
    finally:
        container.close()


def _sample_live(name: str, cam: SourceSettings, k: int, interval_s: float,
                 timeout_s: float) -> list[CalibFrame]:
    """One frame every ``interval_s`` of wall time from a live source, until ``k`` or timeout."""
    from engines.video import iter_video_frames, open_source

    container = open_source(cam)
    out: list[CalibFrame] = []
    deadline = time.monotonic() + timeout_s
    next_at = 0.0
    try:
        for frame in iter_video_frames(container, stall_timeout_s=cam.reconnect.stall_timeout_s):
            now = time.monotonic()
            if now >= next_at:
                out.append(CalibFrame(name, float(frame.time or 0.0),
                                      frame.to_ndarray(format="rgb24")))
                next_at = now + interval_s
                log.info("frame_collected", camera=name, n=len(out), of=k)
            if len(out) >= k or now > deadline:
                break
    finally:
        container.close()
    return out


def collect_frames(cameras: Mapping[str, CameraSource], count: int, *,
                   live_interval_s: float = 2.0, live_timeout_s: float = 120.0
                   ) -> list[CalibFrame]:
    """About ``count`` frames spread over the enabled cameras (equal share) and over time."""
    cams = {n: c for n, c in cameras.items() if c.enabled}
    if not cams:
        raise EngineError("no enabled camera in the config to collect calibration frames from")
    share = math.ceil(count / len(cams))
    frames: list[CalibFrame] = []
    for name, cam in cams.items():
        live = is_live(cam.url)
        if live:
            got = _sample_live(name, cam, share, live_interval_s, live_timeout_s)
        else:
            got = _sample_file(name, cam, share)
        log.info("frames_collected", camera=name, frames=len(got), wanted=share,
                 live=live)
        frames.extend(got)
    if len(frames) < 2:
        raise EngineError(f"only {len(frames)} frame(s) could be collected from "
                          f"{', '.join(cams)}; INT8 calibration needs at least 2")
    return frames


def split_holdout(frames: list[CalibFrame], holdout: float, seed: int = 0
                  ) -> tuple[list[CalibFrame], list[CalibFrame]]:
    """(calibration, held back). Every camera contributes to both where it has >= 2 frames."""
    rng = np.random.default_rng(seed)
    calib: list[CalibFrame] = []
    held: list[CalibFrame] = []
    by_cam: dict[str, list[CalibFrame]] = {}
    for f in frames:
        by_cam.setdefault(f.camera, []).append(f)
    for cam_frames in by_cam.values():
        idx = rng.permutation(len(cam_frames))
        n_hold = min(len(cam_frames) - 1, max(1, round(len(cam_frames) * holdout)))
        if len(cam_frames) < 2:
            n_hold = 0
        hold = set(idx[:n_hold].tolist())
        for i, f in enumerate(cam_frames):
            (held if i in hold else calib).append(f)
    if not held and len(calib) >= 2:  # one frame per camera: hold back whole cameras' frames
        n_hold = min(len(calib) - 1, max(1, round(len(calib) * holdout)))
        held, calib = calib[:n_hold], calib[n_hold:]
    if not held or not calib:
        raise EngineError(f"{len(frames)} frame(s) cannot be split into calibration and "
                          f"held-back frames; collect more (--frames)")
    return calib, held


def tile_frames(frames: list[CalibFrame], window: tuple[int, int], block: int,
                overlap: float) -> list[tuple[Any, np.ndarray]]:
    """[(layout, tiles (n, 3, wh, ww))] per frame, tiled as the pipeline tiles."""
    from engines.tiling import TileLayout

    out = []
    for f in frames:
        h, w = f.rgb.shape[:2]
        layout = TileLayout.plan(h, w, window=window, block=block, overlap=overlap)
        out.append((layout, layout.cut(f.rgb)))
    return out


# -- quantisation ---------------------------------------------------------------------------

def inline_identity_initializers(model: Any) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer, in place.

    The TorchScript exporter routes some parameters (folded convolution biases shared by two
    convolutions) through ``Identity`` nodes. ONNX Runtime only fuses ``DQ -> Conv -> Q`` into an
    integer ``QLinearConv`` when the bias is a plain initializer, so without this most
    convolutions of a ResNet stay float and INT8 is slower than fp32. Returns how many were
    inlined.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    keep = []
    inlined = 0
    for node in model.graph.node:
        if (node.op_type == "Identity" and node.input[0] in inits
                and node.output[0] not in outputs):
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]),
                                           name=node.output[0])
            model.graph.initializer.append(copy)
            inlined += 1
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return inlined


def last_ops(model: Any, op_types: tuple[str, ...], n: int) -> list[str]:
    """Names of the ``n`` nodes of ``op_types`` nearest the graph output (fewest nodes between).

    Node order in an exported graph is not depth order (a residual branch's convolution can come
    after the main path's), so this walks back from the outputs.
    """
    if n <= 0:
        return []
    producer = {o: node for node in model.graph.node for o in node.output}
    seen: set[str] = set()
    frontier = [producer[o.name] for o in model.graph.output if o.name in producer]
    found: list[str] = []
    while frontier and len(found) < n:
        nxt = []
        for node in frontier:
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in op_types and len(found) < n:
                found.append(node.name)
            nxt.extend(producer[i] for i in node.input if i in producer)
        frontier = nxt
    return found


def quantize_onnx(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                  tiles: np.ndarray, *, input_name: str, opts: Int8Options,
                  cache_path: str | os.PathLike[str] | None = None) -> None:
    """ONNX Runtime static quantisation (QDQ) of ``fp32_path`` calibrated on ``tiles``.

    ``cache_path``: ONNX Runtime's JSON calibration cache (tensor ranges) is written there; an
    existing one is reused instead of calibrating again.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    stride = 4  # tiles per calibration pass: ranges are merged after each pass
    tiles = tiles[: max(stride, len(tiles) // stride * stride)]
    if len(tiles) < stride:
        raise EngineError(f"{len(tiles)} calibration tiles; at least {stride} are needed")

    class _Reader(CalibrationDataReader):
        """One tile per call, within the range ONNX Runtime's strided calibration sets."""

        def __init__(self) -> None:
            self._i, self._end = 0, len(tiles)

        def __len__(self) -> int:
            return len(tiles)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._i, self._end = start_index, min(end_index, len(tiles))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= self._end:
                return None
            self._i += 1
            return {input_name: tiles[self._i - 1:self._i]}

        def rewind(self) -> None:
            self._i = 0

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.method]
    act = QuantType.QInt8 if opts.activations == "int8" else QuantType.QUInt8
    import onnx

    model = onnx.load(str(fp32_path))
    inlined = inline_identity_initializers(model)
    exclude = last_ops(model, opts.op_types, opts.float_last)
    candidates = [n.name for n in model.graph.node if n.op_type in opts.op_types]
    log.info("int8_preprocess", identity_initializers_inlined=inlined,
             quantised_ops=len(candidates) - len(exclude), kept_float="|".join(exclude))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" advice: it breaks ViT exports
    try:
        quantize_static(
            model, str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(opts.op_types), per_channel=opts.per_channel,
            nodes_to_exclude=exclude,
            activation_type=act, weight_type=QuantType.QInt8, calibrate_method=method,
            calibration_cache_path=str(cache_path) if cache_path else None,
            # The calibrator keeps every intermediate tensor until it reduces them to ranges;
            # reducing every `stride` tiles bounds memory (RN50 at 384 px: ~0.2 GB per tile).
            extra_options={"CalibStridedMinMax": stride})
    finally:
        root.setLevel(level)


def frame_counts(engine: Engine, tiled: list[tuple[Any, np.ndarray]]
                 ) -> tuple[np.ndarray, float, float]:
    """Per-frame counts (stitched maps summed), and wall and CPU seconds in ``engine.run``.

    CPU seconds (all threads of this process) stay meaningful when other work shares the CPU.
    """
    counts = []
    wall = cpu = 0.0
    for layout, tiles in tiled:
        maps = []
        for i in range(0, len(tiles), engine.max_batch):
            t0, c0 = time.perf_counter(), time.process_time()
            maps.append(engine.run(tiles[i:i + engine.max_batch]))
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
        counts.append(float(layout.stitch(np.concatenate(maps)).sum()))
    return np.asarray(counts, dtype=np.float64), wall, cpu


def deviation_report(fp32: np.ndarray, int8: np.ndarray) -> dict[str, Any]:
    """MAE / max / relative deviation of per-frame INT8 counts against FP32."""
    diff = np.abs(int8 - fp32)
    denom = float(np.abs(fp32).sum())
    per_frame_rel = diff / np.maximum(np.abs(fp32), 1e-9)
    return {"frames": int(len(fp32)),
            "mae": float(diff.mean()),
            "max": float(diff.max()),
            "relative_deviation": float(diff.sum() / denom) if denom > 0 else float("inf"),
            "max_relative_deviation": float(per_frame_rel.max()),
            "mean_count_fp32": float(fp32.mean()),
            "mean_count_int8": float(int8.mean()),
            "per_frame": [{"fp32": float(a), "int8": float(b)} for a, b in zip(fp32, int8,
                                                                                strict=True)]}


def calibrate_int8(fp32_engine_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                   frames: list[CalibFrame], opts: Int8Options, *, overlap: float = 0.0,
                   max_batch: int | None = None) -> Int8Result:
    """Quantise an fp32 ONNX engine on ``frames``, report, and write it unless it deviates.

    Raises :class:`Int8Refused` (carrying the report) when the relative deviation exceeds
    ``opts.max_deviation``.
    """
    from engines.backends.onnx_backend import OrtEngine
    from engines.backends.sidecar import read_sidecar, sha256_file, write_sidecar

    meta = read_sidecar(fp32_engine_path)
    if meta["precision"] != "fp32" or meta["backend"] != "onnx":
        raise EngineError(f"{fp32_engine_path}: INT8 calibration starts from an fp32 ONNX engine, "
                          f"this is {meta['backend']} {meta['precision']}")
    window = (int(meta["window"][0]), int(meta["window"][1]))
    block = int(meta["block_size"])
    calib, held = split_holdout(frames, opts.holdout, opts.seed)
    calib_tiles = np.concatenate([t for _, t in tile_frames(calib, window, block, overlap)])
    if len(calib_tiles) > opts.max_calibration_tiles:
        pick = np.linspace(0, len(calib_tiles) - 1, opts.max_calibration_tiles).round()
        calib_tiles = calib_tiles[np.unique(pick.astype(int))]
    held_tiled = tile_frames(held, window, block, overlap)
    log.info("int8_calibrating", calibration_frames=len(calib), calibration_tiles=len(calib_tiles),
             held_back_frames=len(held), method=opts.method, ops="/".join(opts.op_types))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    t0 = time.monotonic()
    try:
        # A fresh ORT calibration cache (tensor ranges) each run: new frames, new ranges.
        cache = out.with_name(out.name + ".calib.json")
        cache.unlink(missing_ok=True)
        quantize_onnx(fp32_engine_path, tmp, calib_tiles, input_name=str(meta["input_name"]),
                      opts=opts, cache_path=cache)
        calib_s = time.monotonic() - t0
        batch = int(max_batch or meta["batch"]["max"])
        int8_meta = {**meta, "precision": "int8", "engine_sha256": sha256_file(tmp)}
        fp32_engine = OrtEngine(fp32_engine_path, max_batch=batch, threads=opts.threads,
                                meta=meta)
        int8_engine = OrtEngine(tmp, max_batch=batch, threads=opts.threads, meta=int8_meta)
        for e in (fp32_engine, int8_engine):
            e.warmup(1)
        c32, s32, cpu32 = frame_counts(fp32_engine, held_tiled)
        c8, s8, cpu8 = frame_counts(int8_engine, held_tiled)
        n_tiles = sum(len(t) for _, t in held_tiled)
        report = deviation_report(c32, c8)
        report.update({
            "bound": opts.max_deviation,
            "tiles_per_s_fp32": n_tiles / s32 if s32 > 0 else None,
            "tiles_per_s_int8": n_tiles / s8 if s8 > 0 else None,
            "speedup": s32 / s8 if s8 > 0 else None,
            "speedup_cpu": cpu32 / cpu8 if cpu8 > 0 else None,
            "held_back_tiles": n_tiles,
            "calibration_frames": len(calib), "calibration_tiles": int(len(calib_tiles)),
            "calibration_seconds": round(calib_s, 1),
            "cameras": sorted({f.camera for f in frames}),
            "held_back": [f"{f.camera}@{f.t:.2f}s" for f in held],
            "calibration": [f"{f.camera}@{f.t:.2f}s" for f in calib],
            "options": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in asdict(opts).items()},
            "fp32_engine": str(fp32_engine_path),
            "window": list(window), "batch": batch})
        fp32_engine.close()
        int8_engine.close()
        rel = report["relative_deviation"]
        if rel > opts.max_deviation:
            over = rel - opts.max_deviation
            raise Int8Refused(
                f"INT8 count deviation {rel:.2%} on {len(held)} held-back frames exceeds the "
                f"bound {opts.max_deviation:.2%} by {over * 100:.2f} percentage points "
                f"(MAE {report['mae']:.3f}, max {report['max']:.3f} per frame); the INT8 engine "
                f"was not written. Try another --method (this run: {opts.method}), more "
                f"--frames, --float-last 1, or run fp32", report)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    summary = {k: report[k] for k in ("frames", "mae", "max", "relative_deviation",
                                      "max_relative_deviation", "speedup", "speedup_cpu",
                                      "bound",
                                      "calibration_frames", "calibration_tiles")}
    write_sidecar(out, {**{k: v for k, v in meta.items()
                           if k not in ("engine_sha256", "engine_file", "created", "format",
                                        "format_version")},
                        "precision": "int8",
                        "int8": {"format": "QDQ", "ops": list(opts.op_types),
                                 "ort_calibration_cache": str(cache),
                                 "method": opts.method, "per_channel": opts.per_channel,
                                 "float_last": opts.float_last,
                                 "activations": opts.activations, "report": summary},
                        "fp32_engine_sha256": meta["engine_sha256"]})
    log.info("int8_written", engine=str(out), deviation=f"{report['relative_deviation']:.3%}",
             speedup=report["speedup"])
    return Int8Result(report=report, engine_path=out)


def calibrate_from_config(model: ModelSettings, cameras: Mapping[str, CameraSource],
                          cache_dir: str | Path, opts: Int8Options, *,
                          frames: list[CalibFrame] | None = None) -> Int8Result:
    """Collect frames from ``cameras`` and calibrate ``model`` into the engine cache.

    The INT8 engine lands where ``load_engine(checkpoint, precision="int8", cache_dir=...)``
    (and so ``crowdstream run`` with ``model.precision: int8``) looks for it. A config naming an
    fp32 ``.onnx`` engine gets ``<name>-int8.onnx`` beside it.
    """
    from engines.backends.sidecar import read_sidecar
    from engines.export import cached_engine_path, ensure_engine, source_digest

    m = model
    cache_dir = Path(cache_dir)
    prompt = opts.text_prompt
    if m.engine:
        fp32_path = Path(m.engine)
        if fp32_path.suffix != ".onnx":
            raise EngineError(f"model.engine {fp32_path}: INT8 calibration needs the fp32 ONNX "
                              f"engine (a TensorRT plan cannot be re-quantised)")
        out = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    else:
        if not m.checkpoint and not m.random_init:
            raise EngineError("the config's model section names no checkpoint, engine or "
                              "random_init to calibrate")
        fp32_path = ensure_engine(m.checkpoint, cache_dir=cache_dir, backend="onnx",
                                  precision="fp32", max_batch=m.batch, window=m.window,
                                  random_init=m.random_init, text_prompt=prompt)
        out = cached_engine_path(cache_dir, source=m.checkpoint, random_init=m.random_init,
                                 digest=source_digest(m.checkpoint, m.random_init),
                                 backend="onnx", precision="int8", window=m.window,
                                 max_batch=m.batch, text_prompt=prompt)
    read_sidecar(fp32_path)
    if frames is None:
        frames = collect_frames(cameras, opts.frames, live_interval_s=opts.live_interval_s,
                                live_timeout_s=opts.live_timeout_s)
    report_path = out.with_name(out.name + ".report.json")
    try:
        result = calibrate_int8(fp32_path, out, frames, opts, overlap=m.overlap,
                                max_batch=m.batch)
    except Int8Refused as e:
        _write_report(report_path, e.report, written=False)
        raise
    _write_report(report_path, result.report, written=True)
    result.report_path = report_path
    if m.device.startswith("cuda"):
        result.tensorrt_plan, note = _tensorrt_int8(fp32_path, out, frames, opts, m)
        result.notes.append(note)
    return result


def _write_report(path: Path, report: dict[str, Any], *, written: bool) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "engine_written": written}, indent=2) + "\n")


def _tensorrt_int8(fp32_path: Path, int8_path: Path, frames: list[CalibFrame],
                   opts: Int8Options, m: Any) -> tuple[Path | None, str]:
    """TensorRT INT8 plan + calibration cache from the same tiles, where TensorRT exists."""
    from engines.backends.sidecar import read_sidecar
    from engines.backends.tensorrt_backend import build_plan, import_tensorrt

    try:
        import_tensorrt()
    except EngineError as e:
        return None, f"TensorRT calibration cache skipped: {e}"
    meta = read_sidecar(fp32_path)
    window = (int(meta["window"][0]), int(meta["window"][1]))
    calib, _ = split_holdout(frames, opts.holdout, opts.seed)
    tiles = np.concatenate([t for _, t in tile_frames(calib, window, int(meta["block_size"]),
                                                      m.overlap)])
    plan = int8_path.with_suffix(".plan")
    keep = {k: meta.get(k) for k in ("checkpoint_hash", "checkpoint", "random_init", "spec",
                                     "text_prompt", "exporter")}
    build_plan(fp32_path, plan, precision="int8", window=window,
               block_size=int(meta["block_size"]), max_batch=m.batch, device=m.device,
               calibration_tiles=tiles, calibration_cache=plan.with_suffix(".calib"), meta=keep)
    return plan, f"TensorRT INT8 plan {plan} (calibration cache {plan.with_suffix('.calib')})"
