"""Native TensorRT backend: build a plan from ONNX, load it, run it with ``execute_async_v3``.

Written against the TensorRT 10 Python API (``Builder``, ``OnnxParser``, ``IBuilderConfig`` with an
optimisation profile over the batch range, ``BuilderFlag.FP16`` / ``INT8``,
``IInt8EntropyCalibrator2`` with a calibration cache, ``Runtime.deserialize_cuda_engine``,
``IExecutionContext.set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). Device
memory and streams come from torch, which the inference process imports anyway.

TensorRT is not installable in every environment; every entry point calls
:func:`import_tensorrt` first, which fails with a message saying what to do instead. A plan only
runs on the TensorRT version and GPU it was built for; the sidecar records both and
:func:`engines.backends.sidecar.check_tensorrt_compat` refuses a mismatch before deserialising.

Example (on a machine with an NVIDIA GPU and TensorRT)::

    meta = build_plan("m.onnx", "m.plan", precision="fp16", window=(384, 384), max_batch=8,
                      block_size=8, device="cuda")
    engine = TrtEngine("m.plan", device="cuda")
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.base import Engine, EngineError, make_description
from engines.backends.sidecar import check_tensorrt_compat, read_sidecar, write_sidecar
from engines.log import get_logger

log = get_logger("engine.tensorrt")


def import_tensorrt() -> Any:
    """``import tensorrt`` or raise :class:`EngineError` with what to use instead."""
    try:
        import tensorrt
    except ImportError as e:
        raise EngineError(
            f"TensorRT is not installed (import tensorrt failed: {e}); it needs an NVIDIA GPU and "
            "the `tensorrt` Python package matching the CUDA driver. Use backend onnx or torch "
            "here, or build the plan on the machine that will run it") from e
    return tensorrt


def gpu_identity(device: str) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise EngineError(f"TensorRT needs a CUDA GPU; torch sees none (device {device!r})")
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def _has_qdq(onnx_path: str | os.PathLike[str]) -> bool:
    """Whether the ONNX model carries QuantizeLinear nodes (explicit INT8 quantisation)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _make_calibrator(trt: Any, tiles: np.ndarray, batch: int, cache_path: Path, device: str
                     ) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``tiles`` in batches, reading/writing a cache."""
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self._buf = torch.empty((batch, *tiles.shape[1:]), dtype=torch.float32,
                                    device=device)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next + batch > len(tiles):
                return None
            self._buf.copy_(torch.from_numpy(tiles[self._next:self._next + batch]))
            self._next += batch
            torch.cuda.synchronize()
            return [int(self._buf.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            # A cache from an earlier run skips calibration entirely (same network and data).
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.write_bytes(bytes(cache))

    return _Calibrator()


def build_plan(onnx_path: str | os.PathLike[str], plan_path: str | os.PathLike[str], *,
               precision: str, window: tuple[int, int], block_size: int, max_batch: int,
               device: str = "cuda", opt_batch: int | None = None,
               calibration_tiles: np.ndarray | None = None,
               calibration_cache: str | os.PathLike[str] | None = None,
               workspace_gib: float = 4.0, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build and serialise a TensorRT plan from an ONNX engine file; write its sidecar.

    INT8: a QDQ model (from ``crowdstream calibrate int8``) is built as is (explicit
    quantisation); a plain model needs ``calibration_tiles`` (n, 3, H, W) or an existing
    ``calibration_cache``. Returns the sidecar dict.
    """
    trt = import_tensorrt()
    gpu_name, capability = gpu_identity(device)
    import torch

    torch.cuda.set_device(torch.device(device))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 10:  # TensorRT 8/9 still need explicit batch asked for; 10+ always is
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    input_name = network.get_input(0).name
    output_name = network.get_output(0).name
    h, w = window
    opt = opt_batch or max_batch
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, 3, h, w), (opt, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        if not hasattr(trt.BuilderFlag, "FP16"):
            # TensorRT 11 builds strongly typed networks only: precision comes from the ONNX.
            raise EngineError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly "
                              "typed networks only); build fp32, or from an fp16 ONNX model")
        config.set_flag(trt.BuilderFlag.FP16)  # layers left unquantised run fp16, not fp32
    calibration: dict[str, Any] = {}
    if precision == "int8":
        if hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)
        if _has_qdq(onnx_path):
            calibration = {"mode": "explicit_qdq"}
        else:
            if not hasattr(trt, "IInt8EntropyCalibrator2"):
                raise EngineError(f"TensorRT {trt.__version__} has no implicit INT8 calibration; "
                                  "build from the QDQ model `crowdstream calibrate int8` writes")
            cache = Path(calibration_cache or Path(plan_path).with_suffix(".calib"))
            if calibration_tiles is None and not cache.is_file():
                raise EngineError("TensorRT INT8 needs calibration tiles or a calibration cache; "
                                  "run `crowdstream calibrate int8 CONFIG`")
            calib_batch = min(max_batch, 8)
            tiles = (calibration_tiles if calibration_tiles is not None
                     else np.zeros((0, 3, h, w), np.float32))
            calibrator = _make_calibrator(trt, tiles, calib_batch, cache, device)
            calib_profile = builder.create_optimization_profile()
            shape = (calib_batch, 3, h, w)
            calib_profile.set_shape(input_name, shape, shape, shape)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(calib_profile)
            calibration = {"mode": "entropy2", "cache": str(cache), "tiles": int(len(tiles))}
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    log.info("tensorrt_build_start", onnx=str(onnx_path), precision=precision,
             batch=f"1..{max_batch}", gpu=gpu_name, sm=capability, trt=trt.__version__)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx_path} ({precision}); see the TensorRT "
                          "messages above")
    Path(plan_path).write_bytes(bytes(serialized))
    log.info("tensorrt_build_done", plan=str(plan_path), seconds=round(time.monotonic() - t0, 1))
    side = {**(meta or {}), "backend": "tensorrt", "precision": precision,
            "window": [h, w], "block_size": int(block_size),
            "batch": {"min": 1, "opt": int(opt), "max": int(max_batch)},
            "input_name": input_name, "output_name": output_name,
            "tensorrt": {"version": trt.__version__, "gpu_name": gpu_name,
                         "compute_capability": capability},
            "calibration": calibration or None}
    write_sidecar(plan_path, side)
    return read_sidecar(plan_path)


def _progress_monitor(trt: Any) -> Any:
    """Log build phases so a minutes-long build shows it is alive."""

    class _Progress(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            log.info("tensorrt_build_phase", phase=phase_name, steps=num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self._last > 5.0:
                log.info("tensorrt_build_progress", phase=phase_name, step=step)
                self._last = now
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return _Progress()


class TrtEngine(Engine):
    """A serialised TensorRT plan (with sidecar) run on one CUDA device."""

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cuda",
                 max_batch: int | None = None, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        # Sidecar first: a broken or foreign sidecar is reported even where TensorRT is absent.
        meta = meta if meta is not None else read_sidecar(self.path)
        if meta["backend"] != "tensorrt":
            raise EngineError(f"{self.path} is a {meta['backend']} engine, not a TensorRT plan")
        if not device.startswith("cuda"):
            raise EngineError(f"a TensorRT plan runs on a CUDA device, not {device!r}")
        trt = import_tensorrt()
        gpu_name, capability = gpu_identity(device)
        check_tensorrt_compat(meta, trt_version=trt.__version__, gpu_name=gpu_name,
                              compute_capability=capability, engine_path=self.path)
        import torch

        self._torch = torch
        self._device = torch.device(device)
        torch.cuda.set_device(self._device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path}; rebuild it with "
                              f"`crowdstream export CHECKPOINT --backend tensorrt`")
        self._context = self._engine.create_execution_context()
        self._input = str(meta["input_name"])
        self._output = str(meta["output_name"])
        limit = int(meta["batch"]["max"])
        if max_batch is not None and max_batch > limit:
            raise EngineError(f"plan {self.path} was built for batches up to {limit}, {max_batch} "
                              f"requested; rebuild with --batch {max_batch}")
        self.max_batch = int(max_batch or limit)
        self.window = (int(meta["window"][0]), int(meta["window"][1]))
        self.block_size = int(meta["block_size"])
        self._stream = torch.cuda.Stream(device=self._device)
        self.meta = meta
        self.engine_id = f"tensorrt-{meta['precision']}-{str(meta['engine_sha256'])[:12]}"
        self.description = make_description(
            backend="tensorrt", precision=str(meta["precision"]), device=device,
            window=self.window, block_size=self.block_size, max_batch=self.max_batch,
            checkpoint_hash=meta.get("checkpoint_hash"), source=str(self.path),
            spec=meta.get("spec"), engine_file=str(self.path), tensorrt=meta["tensorrt"],
            text_prompt=meta.get("text_prompt"))
        log.info("engine_loaded", engine=self.engine_id, gpu=gpu_name, trt=trt.__version__)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = batch.shape[0]
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).to(self._device, non_blocking=False)
            out = torch.empty((n, 1, *self.out_shape), dtype=torch.float32, device=self._device)
            self._context.set_input_shape(self._input, tuple(x.shape))
            self._context.set_tensor_address(self._input, int(x.data_ptr()))
            self._context.set_tensor_address(self._output, int(out.data_ptr()))
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"TensorRT execution failed for {self.path} (batch {n})")
            self._stream.synchronize()
        return out.cpu().numpy()

    def close(self) -> None:
        self._context = None
        self._engine = None
