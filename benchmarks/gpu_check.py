#!/usr/bin/env python3
"""The GPU check: every inference path of crowdstream on one GPU against torch fp32, in one run.

Measures the released architectures with random weights (speed does not depend on the weights):
CLIP-EBC RN50, CLIP-EBC ViT-B/16 and CLIP-Count ViT-B/16, each on 1080p frames resized and cut
exactly as the pipeline's tile stage does (``engines.predict.ResizeRule``, ``resize_frame``,
``engines.tiling.TileLayout``), through the real backends: ``TorchEngine`` fp32 (the baseline,
NCHW, no graphs), fp16 / bf16 autocast, channels-last, CUDA graphs; ONNX Runtime's CUDA and
TensorRT execution providers (``OrtEngine``) where onnxruntime-gpu is importable; the native
TensorRT plan (``TrtEngine``) where ``tensorrt`` imports. Every row has frames/s and the speed-up
and the largest relative per-tile count deviation against fp32 on the same tiles. Then
``crowdstream run`` (a subprocess, stopped with SIGTERM) with ``device: cuda`` on 8 and 32 file
cameras of the demo clip at 5 fps (``realtime``, ``loop``): results/s per camera against 5, and
p50 / p99 capture-to-result latency from the JSON lines.

Each step is guarded (a missing package or an out-of-memory error becomes a row saying why) and a
time budget (``--budget-s``) skips what would not fit, saying so. One results file,
``gpu_check_results.md`` (markdown tables, then the full JSON), is rewritten after every step, so
a run cut short still leaves every figure measured so far.

Run (a machine lent a GPU, see README "GPU"; the wrapper installs carried wheels first)::

    bash benchmarks/gpu_check.sh                       # writes to $OUT, else runs/gpu_check
    python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu_check   # CPU, tiny models
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA = "crowdstream.gpu_check.v1"
RESULTS_NAME = "gpu_check_results.md"
DEMO_CLIP = ROOT / "configs" / "demo" / "mall_demo.mp4"
NO_CUDA = "skipped: no CUDA device"
NOT_REACHED = "not run: the script stopped before this step"
ORT_GPU_MISSING = ("not measurable: onnxruntime-gpu is not installed on the device and its "
                   "wheel exceeds the 64 MiB carry limit")
HELD_SHARE = 0.95  # a camera holds real time when it delivers >= 95% of its target fps


# -- measuring: timing, ratios, deviations -----------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds per timed call: median, 10th and 90th percentiles over ``iters`` calls."""

    median_s: float
    p10_s: float
    p90_s: float
    iters: int

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how far apart the timed calls were (noise)."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else float("nan")


def measure(fn: Callable[[], Any], *, sync: Callable[[], None] = lambda: None, warmup: int = 2,
            min_iters: int = 5, max_iters: int = 50, target_s: float = 2.0,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``fn``: ``warmup`` untimed calls, then timed calls, each between two ``sync()``
    (``torch.cuda.synchronize`` on a GPU: device work is asynchronous). The first timed call
    sizes the rest: about ``target_s`` in all, within ``min_iters`` .. ``max_iters`` calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []

    def once() -> None:
        sync()
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)

    once()
    wanted = int(target_s / max(times[0], 1e-9))
    for _ in range(max(min_iters, min(max_iters, wanted)) - 1):
        once()
    p10, p90 = np.percentile(times, [10, 90])
    return Timing(statistics.median(times), float(p10), float(p90), len(times))


def speedup(baseline_s: float | None, variant_s: float | None) -> float | None:
    """How many times faster than the baseline (baseline time / variant time); None if unknown."""
    if not baseline_s or not variant_s or not np.isfinite(baseline_s) or not np.isfinite(variant_s):
        return None
    return baseline_s / variant_s


def max_rel_deviation(values: np.ndarray, reference: np.ndarray, floor: float = 1e-6) -> float:
    """Largest ``|value - reference| / |reference|`` (denominator at least ``floor``)."""
    v = np.asarray(values, np.float64).ravel()
    r = np.asarray(reference, np.float64).ravel()
    if v.shape != r.shape:
        raise ValueError(f"{v.size} values against {r.size} reference values")
    if v.size == 0:
        return float("nan")
    return float(np.max(np.abs(v - r) / np.maximum(np.abs(r), floor)))


def tile_counts(maps: np.ndarray) -> np.ndarray:
    """The count of each tile: the sum of its (1, h, w) map of objects per cell, in float64."""
    return np.asarray(maps, np.float64).reshape(len(maps), -1).sum(axis=1)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# -- the time budget -----------------------------------------------------------------------------


class Budget:
    """Wall-clock budget of the whole script; steps ask before they start.

    Example::

        budget = Budget(420)
        why = budget.check(estimate_s=60, reserve_s=150)   # None: go; else the skip reason
    """

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s = float(total_s)
        self._clock = clock
        self._t0 = clock()

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def check(self, estimate_s: float, reserve_s: float = 0.0) -> str | None:
        """None when a step of about ``estimate_s`` fits beside ``reserve_s`` kept for later
        steps; otherwise the reason to skip it."""
        free = self.left() - reserve_s
        if estimate_s <= free:
            return None
        kept = f" after keeping {reserve_s:.0f} s for the pipeline runs" if reserve_s else ""
        return (f"skipped: would not fit the time budget (needs ~{estimate_s:.0f} s, "
                f"{max(0.0, free):.0f} s left{kept} of {self.total_s:.0f} s)")


class Interrupted(BaseException):
    """SIGTERM / SIGINT (the wrapper's time limit): write what was measured and stop. Not an
    ``Exception``, so the guards that turn a failed step into a row do not swallow it."""


# -- the results file --------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".2f", none: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return none
    return format(value, spec)


class Results:
    """The one results file: markdown tables, then the whole document as JSON; rewritten
    (atomically) after every step."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"schema": SCHEMA, **header, "engine_rows": [],
                                    "pipeline_rows": [], "notes": []}

    def save(self) -> None:
        text = self.markdown() + "\n<details><summary>all figures (JSON)</summary>\n\n```json\n" \
            + json.dumps(self.doc, indent=1, default=str) + "\n```\n\n</details>\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def markdown(self) -> str:
        d = self.doc
        dev = d.get("device", {})
        lines = ["# crowdstream GPU check", "",
                 f"- device: {dev.get('summary', '?')}",
                 f"- machine: {dev.get('cpu', '?')}; Python {dev.get('python', '?')}",
                 f"- packages: {dev.get('packages_line', '?')}",
                 f"- settings: {', '.join(f'{k} {v}' for k, v in dev.get('settings', {}).items())}",
                 f"- command: `{d.get('command', '?')}`",
                 f"- started {d.get('started', '?')}, {_fmt(d.get('duration_s'), '.0f', '?')} s "
                 f"of a {_fmt(d.get('budget_s'), '.0f', '?')} s budget; status: "
                 f"{d.get('status', 'running')}", ""]
        lines += self._engine_table() + [""] + self._pipeline_table()
        if d["notes"]:
            lines += ["", "Notes:", *[f"- {n}" for n in d["notes"]]]
        return "\n".join(lines) + "\n"

    def _engine_table(self) -> list[str]:
        o = self.doc.get("options", {})
        out = [f"## Engines: {o.get('frame', '?')} frames, tiled as the pipeline tiles them, "
               f"batch {o.get('batch', '?')} (device in every row)", "",
               "| model | variant | device | status | window | tiles/frame | ms/frame median "
               "(p10-p90) | frames/s | tiles/s | x fp32 | max tile count dev vs fp32 | "
               "map rel L2 | iters |", "|" + "---|" * 13]
        for r in self.doc["engine_rows"]:
            ok = r["status"] == "ok"
            ms = (f"{_fmt(r.get('ms_median'))} ({_fmt(r.get('ms_p10'))}-{_fmt(r.get('ms_p90'))})"
                  if ok else "")
            out.append(
                f"| {r['model']} | {r['variant']} | {r.get('device', '')} | "
                f"{r['status'] if ok else r.get('reason', r['status'])} | {r.get('window', '')} "
                f"| {r.get('tiles_per_frame', '')} | {ms} | {_fmt(r.get('frames_per_s'))} "
                f"| {_fmt(r.get('tiles_per_s'), '.1f')} | {_fmt(r.get('speedup_vs_fp32'))} "
                f"| {_fmt(r.get('count_dev_max_rel'), '.2e')} | {_fmt(r.get('map_rel_l2'), '.2e')} "
                f"| {r.get('iters', '')} |")
        return out

    def _pipeline_table(self) -> list[str]:
        out = ["## Pipeline: `crowdstream run`, file cameras of the demo clip (realtime, loop)", "",
               "| cameras | device | status | engine | target fps | results/s per camera "
               "min / median / max | held in real time | latency ms p50 / p99 / max | "
               "window s | GPU util % mean | results |", "|" + "---|" * 11]
        for r in self.doc["pipeline_rows"]:
            ok = r["status"] == "ok"
            rates = (f"{_fmt(r.get('rate_min'))} / {_fmt(r.get('rate_median'))} / "
                     f"{_fmt(r.get('rate_max'))}" if ok else "")
            lat = (f"{_fmt(r.get('latency_ms_p50'), '.0f')} / {_fmt(r.get('latency_ms_p99'), '.0f')}"
                   f" / {_fmt(r.get('latency_ms_max'), '.0f')}" if ok else "")
            held = {True: "yes", False: "no"}.get(r.get("held_real_time"), "")
            out.append(
                f"| {r['cameras']} | {r.get('device', '')} | "
                f"{r['status'] if ok else r.get('reason', r['status'])} | {r.get('engine', '')} "
                f"| {r.get('fps', '')} | {rates} | {held} | {lat} | {_fmt(r.get('window_s'), '.1f')} "
                f"| {_fmt(r.get('gpu_util_mean'), '.0f')} | {r.get('results', '')} |")
        return out


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document inside a results file written by :class:`Results`."""
    text = Path(path).read_text()
    start = text.index("```json\n") + len("```json\n")
    return json.loads(text[start:text.index("\n```", start)])


# -- what the run is made of ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCase:
    """One model to measure: a label, a key (``--models``) and how to make its spec."""

    key: str
    label: str
    spec: Callable[[], Any]


def _ebc(backbone: str) -> Callable[[], Any]:
    def make() -> Any:
        from engines.models.official import official_ebc_spec

        return official_ebc_spec(backbone, "nwpu")  # the anchors' data set does not change speed
    return make


def _count() -> Any:
    from engines.models.official import official_count_spec

    return official_count_spec(pretrained=None)  # no weights can be downloaded there


def _small(name: str) -> Callable[[], Any]:
    def make() -> Any:
        from engines.models import small_spec

        return small_spec(name)
    return make


FULL_MODELS = (ModelCase("ebc-rn50", "CLIP-EBC RN50", _ebc("RN50")),
               ModelCase("ebc-vitb16", "CLIP-EBC ViT-B/16", _ebc("ViT-B-16")),
               ModelCase("count-vitb16", "CLIP-Count ViT-B/16", _count))
QUICK_MODELS = (ModelCase("ebc-tiny-rn", "ebc-tiny-rn", _small("ebc-tiny-rn")),
                ModelCase("count-tiny", "count-tiny", _small("count-tiny")))


@dataclass(frozen=True)
class Variant:
    """One way of running a model; ``kind`` picks the backend."""

    name: str
    kind: str  # torch | transfer | ort-cuda | ort-trt | tensorrt
    precision: str = "fp32"
    channels_last: bool = False
    graphs: bool = False
    cuda_only: bool = True
    estimate_s: float = 10.0  # wall seconds on a GPU, build / export / capture included


BASELINE = "torch fp32 (baseline)"
VARIANTS = (
    Variant(BASELINE, "torch", cuda_only=False),
    Variant("torch fp16 autocast", "torch", "fp16"),
    Variant("torch bf16 autocast", "torch", "bf16"),
    Variant("torch fp32 channels-last", "torch", "fp32", channels_last=True),
    Variant("torch fp16 channels-last", "torch", "fp16", channels_last=True),
    Variant("torch fp32 channels-last + CUDA graphs", "torch", "fp32", True, True, estimate_s=15),
    Variant("torch fp16 channels-last + CUDA graphs (the pipeline's torch path)", "torch", "fp16",
            True, True, estimate_s=15),
    Variant("torch bf16 channels-last + CUDA graphs", "torch", "bf16", True, True, estimate_s=15),
    Variant("copies only: tiles to the GPU, maps back (as engine.run)", "transfer",
            estimate_s=3),
    Variant("ONNX Runtime CUDA EP fp32", "ort-cuda", estimate_s=60),
    Variant("ONNX Runtime TensorRT EP fp16", "ort-trt", "fp16", estimate_s=180),
    Variant("TensorRT fp16 (native plan)", "tensorrt", "fp16", estimate_s=180),
)


@dataclass
class Options:
    """Everything a run is parameterised by (the quick CPU run shrinks the sizes)."""

    device: str
    quick: bool
    models: tuple[ModelCase, ...]
    frame: tuple[int, int]
    frames: int
    batch: int
    overlap: float
    warmup: int
    min_iters: int
    max_iters: int
    target_s: float
    budget_s: float
    cameras: tuple[int, ...]
    fps: float
    run_s: float
    settle_s: float
    startup_timeout_s: float
    pipeline_model: str
    pipeline_precision: str
    out: Path
    command: str
    python_command: str
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "quick": self.quick,
                "models": [m.key for m in self.models],
                "frame": f"{self.frame[1]}x{self.frame[0]}", "frames": self.frames,
                "batch": self.batch, "overlap": self.overlap, "warmup": self.warmup,
                "iters": f"{self.min_iters}..{self.max_iters} (~{self.target_s:g} s per row)",
                "cameras": list(self.cameras), "fps": self.fps, "run_s": self.run_s,
                "settle_s": self.settle_s, "pipeline_model": self.pipeline_model,
                "pipeline_precision": self.pipeline_precision}


# -- the machine ---------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi(fields: str) -> list[str] | None:
    """One CSV row of ``nvidia-smi --query-gpu=FIELDS`` for GPU 0, or None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits",
                              "-i", "0"], capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")] if out.stdout else None


def device_info(device: str) -> dict[str, Any]:
    """GPU, driver, torch / CUDA / cuDNN versions, packages and settings, for the header."""
    import torch

    from calibrate.bench import machine

    info: dict[str, Any] = {"kind": device, "cpu": machine(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if device != "cpu" else None}
    if device != "cpu":
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        smi = nvidia_smi("name,driver_version,memory.total") or ["?", "?", "?"]
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_mib=props.total_memory // (1 << 20), sms=props.multi_processor_count,
                    driver=smi[1])
        info["summary"] = (f"{props.name} (sm {props.major}.{props.minor}, "
                           f"{props.total_memory / (1 << 30):.0f} GiB, {props.multi_processor_count}"
                           f" SMs), driver {smi[1]}, torch {torch.__version__}, CUDA "
                           f"{torch.version.cuda}, cuDNN {info['cudnn']}")
    else:
        info["summary"] = f"CPU only ({info['cpu']}), torch {torch.__version__}"
    pk = {name: _version(dist) for name, dist in (
        ("open_clip", "open_clip_torch"), ("av", "av"), ("pydantic", "pydantic"),
        ("numpy", "numpy"), ("onnxruntime", "onnxruntime"), ("onnxruntime-gpu", "onnxruntime-gpu"),
        ("tensorrt", "tensorrt"))}
    info["packages"] = pk
    info["packages_line"] = ", ".join(f"{k} {v or 'absent'}" for k, v in pk.items())
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage("/dev/shm")
        info["dev_shm_mib"] = {"total": usage.total >> 20, "free": usage.free >> 20}
    return info


def torch_settings() -> dict[str, Any]:
    """The global torch flags that change fp32 speed and precision (TF32, cuDNN autotuning)."""
    import torch

    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


# -- frames and tiles ----------------------------------------------------------------------------


def demo_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` RGB frames spread over the demo clip, resized to ``size`` (h, w): real content,
    not zeros, and several of them so timed runs rotate through different inputs."""
    from engines.predict import resize_frame
    from engines.video import count_frames, read_frames

    total = count_frames(str(DEMO_CLIP))
    wanted = [int(i * total / count) for i in range(count)]
    return [resize_frame(img, size) for _, img in read_frames(str(DEMO_CLIP), wanted)]


def frame_tiles(spec: Any, frames: list[np.ndarray], overlap: float) -> tuple[Any, list[np.ndarray]]:
    """(layout, tiles per frame): each frame resized by the model's rule and cut into its
    windows exactly as the pipeline's tile stage does."""
    from engines.predict import ResizeRule, resize_frame
    from engines.tiling import TileLayout

    h, w = frames[0].shape[:2]
    th, tw = ResizeRule.from_spec(spec).size(h, w)
    layout = TileLayout.plan(th, tw, tuple(spec.window), spec.block_size, overlap)
    return layout, [layout.cut(np.ascontiguousarray(resize_frame(f, (th, tw)))) for f in frames]


def run_frame(engine: Any, tiles: np.ndarray, batch: int) -> np.ndarray:
    """One frame's tiles through ``engine.run`` in batches of ``batch``: its (n, 1, h, w) maps."""
    return np.concatenate([engine.run(tiles[i:i + batch]) for i in range(0, len(tiles), batch)])


# -- the engine rows -----------------------------------------------------------------------------


def cuda_sync(device: str) -> Callable[[], None]:
    if device == "cpu":
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(torch.device(device))


def free_gpu(device: str) -> None:
    gc.collect()
    if device != "cpu":
        import torch

        torch.cuda.empty_cache()


def ort_reason(kind: str, device: str) -> str | None:
    """Why an ONNX Runtime GPU row cannot be measured here, or None."""
    if device == "cpu":
        return NO_CUDA
    try:
        import onnxruntime as ort
    except ImportError:
        return ORT_GPU_MISSING
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return ORT_GPU_MISSING
    need = "CUDAExecutionProvider" if kind == "ort-cuda" else "TensorrtExecutionProvider"
    if need not in available:
        return f"not measurable: this onnxruntime-gpu has no {need} ({', '.join(available)})"
    return None


def trt_reason(device: str) -> str | None:
    """Why the native TensorRT row cannot be measured here, or None."""
    if device == "cpu":
        return NO_CUDA
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return f"not measurable: the tensorrt package is not installed on the device ({e})"
    return None


def unavailable(variant: Variant, device: str) -> str | None:
    """Why ``variant`` cannot run on ``device`` at all (no time spent), or None."""
    if variant.kind in ("ort-cuda", "ort-trt"):
        return ort_reason(variant.kind, device)
    if variant.kind == "tensorrt":
        return trt_reason(device)
    if variant.cuda_only and device == "cpu":
        return NO_CUDA
    return None


class ModelBench:
    """One model's rows: builds the model once, keeps the fp32 reference outputs."""

    def __init__(self, case: ModelCase, opts: Options, frames: list[np.ndarray],
                 workdir: Path) -> None:
        import torch

        from engines.models import create_model

        self.case, self.opts, self.workdir = case, opts, workdir
        self.spec = case.spec()
        torch.manual_seed(0)
        self.model = create_model(self.spec).eval()
        self.layout, self.tiles = frame_tiles(self.spec, frames, opts.overlap)
        self.reference: list[np.ndarray] | None = None
        self.reference_s: float | None = None
        self._onnx: Path | None = None
        self.checkpoint: Path | None = None

    def base_row(self, variant: Variant) -> dict[str, Any]:
        return {"model": self.case.label, "model_key": self.case.key, "variant": variant.name,
                "kind": variant.kind, "precision": variant.precision,
                "device": self.opts.extra.get("device_name", self.opts.device),
                "window": "x".join(str(v) for v in self.spec.window),
                "tiles_per_frame": self.layout.count,
                "resized_frame": f"{self.layout.width}x{self.layout.height}"}

    def save_checkpoint(self) -> Path:
        """Our checkpoint of the model (for ONNX export and the pipeline), written once."""
        if self.checkpoint is None:
            from engines.checkpoint import save_checkpoint

            path = self.workdir / f"{self.case.key}.pt"
            self.model.cpu()
            self.checkpoint = Path(save_checkpoint(path, self.model, {"random_init": True}))
        return self.checkpoint

    def onnx_file(self) -> Path:
        """The model exported to ONNX as the pipeline's cache would (fp32, dynamic batch)."""
        if self._onnx is None:
            from engines.export import ensure_engine

            self._onnx = ensure_engine(str(self.save_checkpoint()),
                                       cache_dir=self.workdir / "engines", backend="onnx",
                                       max_batch=self.opts.batch)
        return self._onnx

    def engine(self, variant: Variant) -> Any:
        """The real backend engine for ``variant``."""
        opts = self.opts
        if variant.kind == "torch":
            from engines.backends.torch_backend import TorchEngine

            return TorchEngine(self.model, device=opts.device, precision=variant.precision,
                               max_batch=opts.batch, channels_last=variant.channels_last,
                               cuda_graphs=variant.graphs, source=self.case.key)
        if variant.kind in ("ort-cuda", "ort-trt"):
            from engines.backends.onnx_backend import OrtEngine, choose_providers, cuda_index

            path = self.onnx_file()
            if variant.kind == "ort-cuda":
                providers: list[Any] = [("CUDAExecutionProvider",
                                         {"device_id": cuda_index(opts.device)}),
                                        "CPUExecutionProvider"]
            else:
                providers = choose_providers(opts.device, "fp16",
                                             cache_dir=str(self.workdir / "engines"))
            return OrtEngine(path, device=opts.device, max_batch=opts.batch, providers=providers)
        if variant.kind == "tensorrt":
            from engines.backends import load_engine

            return load_engine(str(self.save_checkpoint()), backend="tensorrt",
                               precision=variant.precision, device=opts.device,
                               max_batch=opts.batch, cache_dir=str(self.workdir / "engines"))
        raise ValueError(f"no engine for variant kind {variant.kind!r}")

    def measure_variant(self, variant: Variant) -> dict[str, Any]:
        """Time ``variant`` on the frames' tiles; compare its outputs with fp32's."""
        if variant.kind == "transfer":
            return self._measure_transfer()
        engine = self.engine(variant)
        try:
            if variant.graphs:
                engine.warmup()  # captures one CUDA graph per batch size, before timing
            row = self._time(lambda tiles: run_frame(engine, tiles, self.opts.batch))
            outputs = [run_frame(engine, t, self.opts.batch) for t in self.tiles]
            row["engine"] = engine.description.get("provider", engine.engine_id)
        finally:
            engine.close()  # drops its CUDA graphs, whose memory free_gpu hands back
            free_gpu(self.opts.device)
        if variant.name == BASELINE:
            self.reference, self.reference_s = outputs, row["ms_median"] / 1e3
        row.update(self._compare(outputs, row["ms_median"] / 1e3))
        return row

    def _time(self, per_frame: Callable[[np.ndarray], Any]) -> dict[str, Any]:
        o = self.opts
        cycle = itertools.cycle(self.tiles)
        t = measure(lambda: per_frame(next(cycle)), sync=cuda_sync(o.device), warmup=o.warmup,
                    min_iters=o.min_iters, max_iters=o.max_iters, target_s=o.target_s)
        fps = 1.0 / t.median_s
        return {"ms_median": t.median_s * 1e3, "ms_p10": t.p10_s * 1e3, "ms_p90": t.p90_s * 1e3,
                "spread": t.spread, "iters": t.iters, "frames_per_s": fps,
                "tiles_per_s": fps * self.layout.count}

    def _compare(self, outputs: list[np.ndarray], seconds: float) -> dict[str, Any]:
        from engines.export import relative_l2

        if self.reference is None:
            return {"speedup_vs_fp32": None, "count_dev_max_rel": None, "map_rel_l2": None,
                    "compare_note": "no fp32 baseline to compare with"}
        got, ref = np.concatenate(outputs), np.concatenate(self.reference)
        return {"speedup_vs_fp32": speedup(self.reference_s, seconds),
                "count_dev_max_rel": max_rel_deviation(tile_counts(got), tile_counts(ref)),
                "map_rel_l2": relative_l2(got, ref)}

    def _measure_transfer(self) -> dict[str, Any]:
        """The host<->GPU copies engine.run makes per frame, alone (pageable memory)."""
        import torch

        dev = torch.device(self.opts.device)
        b = self.opts.batch
        h, w = self.spec.window[0] // self.spec.block_size, self.spec.window[1] // self.spec.block_size
        out = torch.empty((b, 1, h, w), device=dev)

        def copies(tiles: np.ndarray) -> None:
            for i in range(0, len(tiles), b):
                x = torch.from_numpy(tiles[i:i + b]).to(dev)
                out[:len(x)].cpu()

        row = self._time(copies)
        row["speedup_vs_fp32"] = None
        row["share_of_fp32_time"] = (row["ms_median"] / 1e3 / self.reference_s
                                     if self.reference_s else None)
        return row


def engine_section(opts: Options, results: Results, budget: Budget, workdir: Path,
                   reserve_s: float, checkpoints: dict[str, Path]) -> None:
    """Every model's rows, in order, each guarded and budgeted; results saved after each."""
    frames = None
    rows = results.doc["engine_rows"]
    for case in opts.models:
        placeholders = [i for i, r in enumerate(rows) if r["model_key"] == case.key]
        why = budget.check(20, reserve_s)
        bench = None
        if why is None:
            try:
                frames = frames if frames is not None else demo_frames(opts.frames, opts.frame)
                bench = ModelBench(case, opts, frames, workdir)
            except Exception as e:  # a model that cannot be built: every row says why
                why = f"error: preparing the frames or building the model failed: {_err(e)}"
        for i, variant in zip(placeholders, VARIANTS, strict=True):
            rows[i] = _variant_row(bench, variant, opts, budget, reserve_s, why, rows[i])
            results.save()
            print(f"  {case.label} | {variant.name}: {_row_line(rows[i])}", flush=True)
        if bench is not None:
            if case.key == opts.pipeline_model and bench.checkpoint is None:
                with contextlib.suppress(Exception):
                    bench.save_checkpoint()
            if bench.checkpoint is not None:
                checkpoints[case.key] = bench.checkpoint
            del bench
            free_gpu(opts.device)


def _variant_row(bench: ModelBench | None, variant: Variant, opts: Options, budget: Budget,
                 reserve_s: float, why: str | None, row: dict[str, Any]) -> dict[str, Any]:
    reason = unavailable(variant, opts.device) or why
    if reason is None:
        reason = budget.check(variant.estimate_s, reserve_s)
    if bench is None or reason is not None:
        return {**row, "status": _status(reason), "reason": reason or "model not built"}
    row = {**row, **bench.base_row(variant)}
    t0 = time.monotonic()
    try:
        row.update(bench.measure_variant(variant), status="ok")
    except Exception as e:
        row.update(status="error", reason=f"error: {_err(e)}")
        free_gpu(opts.device)
    row["wall_s"] = round(time.monotonic() - t0, 1)
    return row


def _status(reason: str | None) -> str:
    return (reason or "error").split(":")[0]


def _err(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    if "OutOfMemory" in name or "out of memory" in text.lower():
        name = f"out of GPU memory ({name})"
    return f"{name}: {text[:400]}"


def _row_line(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return r.get("reason", r["status"])
    return (f"{_fmt(r.get('ms_median'))} ms/frame, {_fmt(r.get('frames_per_s'))} frames/s, "
            f"x{_fmt(r.get('speedup_vs_fp32'), '.2f', '-')}, dev "
            f"{_fmt(r.get('count_dev_max_rel'), '.1e', '-')}")


# -- the pipeline rows ---------------------------------------------------------------------------


def pipeline_estimate(cameras: int, opts: Options) -> float:
    """Wall seconds one ``crowdstream run`` step takes: start, settle, measure, stop."""
    start = 30 if opts.quick else 40 + 0.5 * cameras  # spawn, engine load, first results
    return start + 15 + opts.settle_s + opts.run_s  # + 15: SIGTERM, drain, exit


def pipeline_config(workdir: Path, cameras: int, opts: Options,
                    model: dict[str, Any]) -> dict[str, Any]:
    """The run config: ``cameras`` file cameras of the demo clip, paced like live cameras at
    ``opts.fps`` (``latest`` policy, as live sources), JSON lines, no Redis, no metrics port."""
    return {"run_dir": str(workdir / f"run_{cameras}cams"), "jsonl": "counts.jsonl",
            "model": {**model, "backend": "torch", "device": opts.device,
                      "precision": opts.pipeline_precision, "batch": opts.batch,
                      "cache_dir": str(workdir / "engines")},
            "redis": {"enabled": False}, "metrics": {"port": None, "status_every_s": 5.0},
            # 4 frame slots per camera keep 32 rings of 640x480 within a small /dev/shm
            # a drain long enough to count what is in flight under load (else exit 3: lost)
            "runtime": {"drain_timeout_s": 10.0, "frame_slots": 4},
            "defaults": {"realtime": True, "loop": True, "fps": opts.fps,
                         "smoothing": {"method": "none"}},
            "cameras": {f"cam{i:02d}": {"url": str(DEMO_CLIP)} for i in range(cameras)}}


class JsonlTail:
    """Reads the complete lines appended to a JSON-lines file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._rest = b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


class GpuSampler:
    """GPU utilisation and memory from ``nvidia-smi`` once a second, in a thread."""

    def __init__(self) -> None:
        self.util: list[float] = []
        self.mem_mib: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=20)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            got = nvidia_smi("utilization.gpu,memory.used")
            with contextlib.suppress(TypeError, ValueError):
                self.util.append(float(got[0]))  # type: ignore[index]
                self.mem_mib.append(float(got[1]))  # type: ignore[index]


def pipeline_stats(records: list[dict[str, Any]], cameras: list[str], window: tuple[float, float],
                   fps: float) -> dict[str, Any]:
    """Results/s per camera and capture-to-result latency of the count lines whose
    ``result_ts`` lies in ``window`` (wall-clock seconds)."""
    t0, t1 = window
    span = max(t1 - t0, 1e-9)
    per_cam = dict.fromkeys(cameras, 0)
    lat: list[float] = []
    for r in records:
        if r.get("type") != "count" or not t0 <= float(r.get("result_ts", -1)) < t1:
            continue
        cam = r.get("camera")
        if cam in per_cam:
            per_cam[cam] += 1
            lat.append(float(r["latency_ms"]))
    rates = sorted(n / span for n in per_cam.values())
    return {"window_s": span, "results": int(sum(per_cam.values())),
            "rate_min": rates[0] if rates else None,
            "rate_median": statistics.median(rates) if rates else None,
            "rate_max": rates[-1] if rates else None,
            "held_real_time": bool(rates) and rates[0] >= HELD_SHARE * fps,
            "cameras_without_results": [c for c, n in per_cam.items() if n == 0],
            "latency_ms_p50": percentile(lat, 50), "latency_ms_p99": percentile(lat, 99),
            "latency_ms_max": max(lat) if lat else None}


def run_pipeline(cameras: int, opts: Options, workdir: Path, model: dict[str, Any],
                 log_path: Path) -> dict[str, Any]:
    """``crowdstream run`` on ``cameras`` cameras: wait for every camera's first result, settle,
    measure ``run_s``, SIGTERM, then compute the figures from its JSON lines."""
    import yaml

    cfg = pipeline_config(workdir, cameras, opts, model)
    cfg_path = workdir / f"pipeline_{cameras}cams.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    jsonl = Path(cfg["run_dir"]) / "counts.jsonl"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(cfg_path), "--quiet",
           "--metrics-port", "none"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CROWDSTREAM_HOME": str(workdir / "home"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    names = list(cfg["cameras"])
    row: dict[str, Any] = {"command": shlex.join(cmd), "policy": "latest (realtime files)"}
    with log_path.open("wb") as log, GpuSampler() as gpu:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            window, note = _drive(proc, JsonlTail(jsonl), names, opts)
        finally:
            row["exit_code"] = _stop(proc)
    records = JsonlTail(jsonl).read()
    row.update(pipeline_stats(records, names, window, opts.fps), startup_note=note)
    row["gpu_util_mean"] = statistics.mean(gpu.util) if gpu.util else None
    row["gpu_mem_mib_max"] = max(gpu.mem_mib) if gpu.mem_mib else None
    row["engine"] = next((r.get("engine_id") for r in records if r.get("type") == "count"), None)
    row["summary"] = _summary_line(log_path)
    if window[1] <= window[0]:
        raise RuntimeError(f"crowdstream run ended before measuring (exit {row['exit_code']}): "
                           f"{_log_tail(log_path)}")
    return row


def _drive(proc: subprocess.Popen, tail: JsonlTail, names: list[str],
           opts: Options) -> tuple[tuple[float, float], str | None]:
    """Wait for the first result of every camera (or the start-up timeout), settle, measure;
    returns the measuring window (wall clock) and a note when not every camera started."""
    first: dict[str, float] = {}
    t_start, note = time.time(), None
    while len(first) < len(names):
        for r in tail.read():
            if r.get("type") == "count":
                first.setdefault(r["camera"], float(r["result_ts"]))
        if proc.poll() is not None:
            return (time.time(), time.time()), f"exited early ({proc.returncode})"
        if time.time() - t_start > opts.startup_timeout_s:
            note = (f"{len(names) - len(first)} of {len(names)} cameras had no result after "
                    f"{opts.startup_timeout_s:.0f} s")
            break
        time.sleep(0.25)
    w0 = time.time() + opts.settle_s
    w1 = w0 + opts.run_s
    while time.time() < w1 and proc.poll() is None:
        time.sleep(0.25)
    return (w0, min(w1, time.time())), note


def _stop(proc: subprocess.Popen) -> int | None:
    """SIGTERM (the supervisor drains and exits 0), SIGKILL if it does not end in 40 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def _summary_line(log_path: Path) -> str | None:
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if " counted, " in ln]
    return lines[-1][:2000] if lines else None


def _log_tail(log_path: Path, n: int = 6) -> str:
    return " | ".join(log_path.read_text(errors="replace").splitlines()[-n:])[-1500:]


def pipeline_model(opts: Options, checkpoints: dict[str, Path], workdir: Path) -> dict[str, Any]:
    """The model section for the runs: a checkpoint saved by the engine rows (or built now),
    or a small random-init spec."""
    key = opts.pipeline_model
    if key in checkpoints:
        return {"checkpoint": str(checkpoints[key])}
    case = next((m for m in FULL_MODELS + QUICK_MODELS if m.key == key), None)
    if case is None or case in QUICK_MODELS:
        return {"random_init": key}
    import torch

    from engines.checkpoint import save_checkpoint
    from engines.models import create_model

    torch.manual_seed(0)
    path = save_checkpoint(workdir / f"{key}.pt", create_model(case.spec()), {"random_init": True})
    checkpoints[key] = Path(path)
    return {"checkpoint": str(path)}


def pipeline_section(opts: Options, results: Results, budget: Budget, workdir: Path,
                     checkpoints: dict[str, Path]) -> None:
    rows = results.doc["pipeline_rows"]
    model: dict[str, Any] | None = None
    for i, cams in enumerate(opts.cameras):
        later = sum(pipeline_estimate(c, opts) for c in opts.cameras[i + 1:])
        why = budget.check(pipeline_estimate(cams, opts), later)
        row = rows[i]
        if why is not None:
            rows[i] = {**row, "status": _status(why), "reason": why}
            results.save()
            continue
        t0 = time.monotonic()
        try:
            model = model or pipeline_model(opts, checkpoints, workdir)
            got = run_pipeline(cams, opts, workdir, model, opts.out / f"pipeline_{cams}cams.log")
            rows[i] = {**row, **got, "status": "ok", "model": model}
        except Exception as e:
            rows[i] = {**row, "status": "error", "reason": f"error: {_err(e)}"}
        rows[i]["wall_s"] = round(time.monotonic() - t0, 1)
        results.save()
        print(f"  pipeline {cams} cameras: {_pipeline_line(rows[i])}", flush=True)


def _pipeline_line(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return r.get("reason", r["status"])
    return (f"{_fmt(r.get('rate_min'))}..{_fmt(r.get('rate_max'))} results/s per camera "
            f"(target {r['fps']}), held: {r['held_real_time']}, latency p50 "
            f"{_fmt(r.get('latency_ms_p50'), '.0f')} ms p99 {_fmt(r.get('latency_ms_p99'), '.0f')} ms")


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--quick", action="store_true",
                   help="tiny random-init models, a small frame, 2 cameras for a few seconds")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default $OUT, else runs/gpu_check)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget of the whole script (default 400, quick 300)")
    p.add_argument("--models", default=None, help="comma list of model keys (default: all of "
                   f"{', '.join(m.key for m in FULL_MODELS)}; quick: "
                   f"{', '.join(m.key for m in QUICK_MODELS)})")
    p.add_argument("--batch", type=int, default=8, help="tiles per batch (the pipeline's default 8)")
    p.add_argument("--cameras", default=None, help="camera counts of the pipeline runs (8,32; "
                   "quick 2; empty: none)")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--run-s", type=float, default=None, help="measuring time per pipeline run")
    p.add_argument("--pipeline-model", default=None,
                   help="a model key (its random-weight checkpoint) or a small random-init spec "
                        "(default ebc-rn50; quick count-tiny)")
    p.add_argument("--command", default=None, help="the command line to record (the wrapper's)")
    a = p.parse_args(argv)
    quick = a.quick
    pool = QUICK_MODELS if quick else FULL_MODELS
    known = {m.key: m for m in FULL_MODELS + QUICK_MODELS}
    keys = a.models.split(",") if a.models else [m.key for m in pool]
    if bad := [k for k in keys if k not in known]:
        p.error(f"unknown model {', '.join(bad)} (known: {', '.join(known)})")
    cams = a.cameras if a.cameras is not None else ("2" if quick else "8,32")
    out = a.out or Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_check")
    python_command = shlex.join([sys.executable, str(Path(__file__).relative_to(ROOT)),
                                 *(sys.argv[1:] if argv is None else argv)])
    return Options(
        device=a.device, quick=quick, models=tuple(known[k] for k in keys),
        frame=(180, 320) if quick else (1080, 1920), frames=2 if quick else 4, batch=a.batch,
        overlap=0.0, warmup=1 if quick else 3, min_iters=2 if quick else 5,
        max_iters=3 if quick else 50, target_s=0.3 if quick else 2.0,
        budget_s=a.budget_s or (300.0 if quick else 400.0),
        cameras=tuple(int(c) for c in cams.split(",") if c.strip()), fps=a.fps,
        run_s=a.run_s or (4.0 if quick else 30.0), settle_s=1.0 if quick else 5.0,
        startup_timeout_s=90.0,
        pipeline_model=a.pipeline_model or ("count-tiny" if quick else "ebc-rn50"),
        pipeline_precision="fp16", out=out,
        command=a.command or python_command, python_command=python_command)


def resolve_device(opts: Options) -> str | None:
    """Fall back to the CPU when CUDA was asked for but torch sees none; the note says so."""
    import torch

    if opts.device == "cpu":
        opts.pipeline_precision = "fp32"
        return None
    if torch.cuda.is_available():
        opts.extra["device_name"] = torch.cuda.get_device_name(torch.device(opts.device))
        return None
    note = (f"{opts.device} was asked for but torch {torch.__version__} sees no CUDA device: "
            "only the CPU rows ran")
    opts.device, opts.pipeline_precision = "cpu", "fp32"
    return note


def plan_rows(opts: Options) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every row the run will fill in, all 'not run' until measured (a cut-short run still
    lists them)."""
    eng = [{"model": m.label, "model_key": m.key, "variant": v.name, "kind": v.kind,
            "precision": v.precision, "device": opts.extra.get("device_name", opts.device),
            "status": "not run", "reason": NOT_REACHED} for m in opts.models for v in VARIANTS]
    pipe = [{"cameras": c, "fps": opts.fps, "device": opts.extra.get("device_name", opts.device),
             "status": "not run", "reason": NOT_REACHED} for c in opts.cameras]
    return eng, pipe


def _on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    budget = Budget(opts.budget_s)
    opts.out.mkdir(parents=True, exist_ok=True)
    note = resolve_device(opts)
    header = {"command": opts.command, "python_command": opts.python_command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "budget_s": opts.budget_s, "options": opts.describe(),
              "device": device_info(opts.device)}
    results = Results(opts.out / RESULTS_NAME, header)
    results.doc["engine_rows"], results.doc["pipeline_rows"] = plan_rows(opts)
    if note:
        results.doc["notes"].append(note)
    results.doc["notes"] += [
        "fp32 is torch's default precision: on a GPU cuDNN convolutions may use TF32 (see "
        "settings); max tile count dev is max |count - fp32| / |fp32| over every tile of "
        f"{opts.frames} frames; map rel L2 is ||maps - fp32|| / ||fp32||",
        "ms/frame: one frame's tiles through engine.run in batches of the batch size, host "
        "arrays in and out (what the pipeline's inference stage does), synchronised, median; "
        "a model with fewer tiles per frame than the batch size (CLIP-Count: 2) runs smaller "
        "batches here than in a pipeline that fills batches across cameras"]
    results.save()
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    checkpoints: dict[str, Path] = {}
    status = "finished"
    print(f"GPU check: {header['device']['summary']}; budget {opts.budget_s:.0f} s", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            workdir = Path(tmp)
            reserve = sum(pipeline_estimate(c, opts) for c in opts.cameras)
            engine_section(opts, results, budget, workdir, reserve, checkpoints)
            results.doc["device"]["settings"] = torch_settings()
            pipeline_section(opts, results, budget, workdir, checkpoints)
    except Interrupted as e:
        status = f"stopped by {e} after {budget.elapsed():.0f} s"
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        results.doc["device"].setdefault("settings", torch_settings())
        results.doc.update(status=status, duration_s=budget.elapsed())
        results.save()
    print(results.markdown(), flush=True)
    print(f"results: {results.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
