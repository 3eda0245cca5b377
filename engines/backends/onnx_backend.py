"""ONNX Runtime backend: CPU, or the CUDA / TensorRT execution providers where installed.

The ``.onnx`` file has a dynamic batch axis and a fixed window; its sidecar (see
:mod:`engines.backends.sidecar`) says which. INT8 engines are QDQ models written by
``crowdstream calibrate int8`` and run the same way.

Example::

    engine = OrtEngine("engines/m.onnx", device="cpu", threads=2)
    maps = engine.run(tiles)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.base import Engine, EngineError, make_description
from engines.backends.sidecar import read_sidecar
from engines.log import get_logger

log = get_logger("engine.onnx")


def import_onnxruntime() -> Any:
    """``import onnxruntime`` or raise :class:`EngineError` saying how to get it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise EngineError(f"ONNX Runtime is not installed ({e}); `pip install onnxruntime` "
                          "(CPU) or `onnxruntime-gpu` (CUDA)") from e
    return onnxruntime


def cuda_index(device: str) -> int:
    """``"cuda"`` -> 0, ``"cuda:1"`` -> 1; raises ValueError for anything else."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ValueError(f"device {device!r} is not a CUDA device (expected cuda or cuda:N)")


def choose_providers(device: str, precision: str, *, cache_dir: str | None = None
                     ) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for ``device``, best first; raises EngineError when none fits.

    On CUDA the TensorRT EP comes first (it builds and caches its own plans), then the CUDA EP;
    the CPU EP is appended so ops without a GPU kernel still run.
    """
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if device == "cpu":
        if precision == "fp16":
            raise EngineError("fp16 needs a GPU: ONNX Runtime's CPU provider has no fast fp16 "
                              "kernels; use precision fp32 or int8 on CPU")
        return ["CPUExecutionProvider"]
    index = cuda_index(device)
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available:
        opts: dict[str, Any] = {"device_id": index, "trt_fp16_enable": precision == "fp16",
                                "trt_int8_enable": False}
        if cache_dir:
            opts.update(trt_engine_cache_enable=True,
                        trt_engine_cache_path=os.path.join(cache_dir, "ort-trt"))
        chosen.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available and precision != "fp16":
        # fp16 through the CUDA EP would need an fp16-converted model; only the TRT EP does it.
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise EngineError(f"ONNX Runtime has no GPU execution provider for {device} "
                          f"{precision} (available: {', '.join(available)}); install "
                          "onnxruntime-gpu, or use device cpu")
    chosen.append("CPUExecutionProvider")
    return chosen


class OrtEngine(Engine):
    """An ``.onnx`` engine file (with sidecar) run by ONNX Runtime.

    ``spin=False`` (default) stops idle ORT threads from busy-waiting between runs, which on a
    shared CPU otherwise burns cycles the decode processes need. ``providers`` overrides
    :func:`choose_providers` (the GPU check measures the CUDA and TensorRT providers one by
    one); the session is refused when ORT does not put the first of them first.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cpu",
                 max_batch: int | None = None, threads: int | None = None,
                 cache_dir: str | None = None, meta: dict[str, Any] | None = None,
                 spin: bool = False,
                 providers: list[str | tuple[str, dict[str, Any]]] | None = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        meta = meta if meta is not None else read_sidecar(self.path)
        if meta["backend"] != "onnx":
            raise EngineError(f"{self.path} is a {meta['backend']} engine, not an ONNX model")
        self.meta = meta
        # The ONNX graph's batch axis is dynamic, so the sidecar's batch range is the exporter's
        # intent, not a limit ORT enforces (unlike a TensorRT profile).
        self.max_batch = int(max_batch or meta["batch"]["max"])
        self.window = (int(meta["window"][0]), int(meta["window"][1]))
        self.block_size = int(meta["block_size"])
        precision = str(meta["precision"])
        explicit = providers is not None
        if providers is None:
            providers = choose_providers(device, precision, cache_dir=cache_dir)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if not spin:
            # ORT's idle worker threads busy-wait by default; on a CPU shared with decoders
            # (and other cameras' processes) that spinning steals the cores they need.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3  # warnings about unused initialisers are noise here
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=so,
                                                 providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"ONNX Runtime could not load {self.path}: {e}") from e
        self._input = str(meta["input_name"])
        self._output = str(meta["output_name"])
        names = [i.name for i in self._session.get_inputs()]
        if self._input not in names:
            raise EngineError(f"{self.path}: input '{self._input}' named in the sidecar is not "
                              f"in the model (inputs: {names})")
        used = self._session.get_providers()
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        # ORT drops a provider it cannot load (missing CUDA / TensorRT libraries) with only a
        # warning: a GPU request must not end up on the CPU, and an explicit provider must not
        # quietly become another one (a benchmark row would measure the wrong thing).
        if (device != "cpu" and used[0] == "CPUExecutionProvider") or (explicit
                                                                      and used[0] != wanted):
            raise EngineError(f"ONNX Runtime could not use {wanted} for {self.path} (the "
                              f"session runs on {', '.join(used)}); check that its CUDA / "
                              "TensorRT libraries load, or use backend torch")
        self.providers = used
        self.engine_id = f"onnx-{precision}-{str(meta['engine_sha256'])[:12]}"
        self.description = make_description(
            backend="onnx", precision=precision, device=device, window=self.window,
            block_size=self.block_size, max_batch=self.max_batch,
            checkpoint_hash=meta.get("checkpoint_hash"), source=str(self.path),
            spec=meta.get("spec"), provider=used[0], providers=used, engine_file=str(self.path),
            text_prompt=meta.get("text_prompt"), threads=threads, spin=spin)
        log.info("engine_loaded", engine=self.engine_id, provider=used[0], file=str(self.path))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run([self._output], {self._input: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
