"""Inference engines: one interface, three backends (torch, ONNX Runtime, TensorRT).

``load_engine`` turns a checkpoint, an engine file (``.onnx`` / ``.plan`` with sidecar JSON) or a
small random-init spec into an :class:`Engine`. ``backend="auto"`` picks the fastest that works
where it runs and logs why the others were not taken:

* device ``cuda[:N]``: TensorRT plan -> ONNX Runtime with a GPU execution provider (TensorRT EP,
  CUDA EP) -> torch (fp16 autocast, CUDA graphs);
* device ``cpu``: ONNX Runtime CPU -> torch eager (TensorRT needs a GPU).

ONNX Runtime's CPU provider is not a fallback for a CUDA device: running on the CPU when a GPU was
asked for would be a silent slowdown of an order of magnitude, so that is an error instead.

Example::

    from engines.backends import load_engine
    engine = load_engine("model.pt", backend="auto", device="cpu", max_batch=8)
    # the exported engine is cached in engines.paths.engine_cache_dir(), shared by every run
    engine.warmup()
    maps = engine.run(tiles)            # (n, 1, H/8, W/8) float32
    print(engine.description)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engines.backends.base import Engine, EngineError
from engines.log import get_logger

__all__ = ["BACKENDS", "Engine", "EngineError", "load_engine"]

BACKENDS = ("auto", "torch", "onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = {".onnx": "onnx", ".plan": "tensorrt", ".engine": "tensorrt"}

log = get_logger("engine")


def load_engine(source: str | os.PathLike[str] | None, *, backend: str = "auto",
                precision: str = "fp32", device: str = "cpu", max_batch: int = 8,
                window: tuple[int, int] | None = None, cache_dir: str | None = None,
                random_init: str | None = None, text_prompt: str | None = None,
                threads: int | None = None) -> Engine:
    """Build or load the engine for ``source`` (checkpoint or engine file) or ``random_init``.

    A checkpoint with backend onnx / tensorrt / auto is exported once into ``cache_dir`` (default:
    the user's engine cache shared by every run, :func:`engines.paths.engine_cache_dir`), keyed by
    the checkpoint's content hash (see :mod:`engines.export`). ``threads`` caps CPU threads
    (ONNX Runtime intra-op / torch). Errors are :class:`EngineError` with what to do.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} (expected one of "
                          f"{', '.join(PRECISIONS)})")
    if max_batch < 1:
        raise EngineError(f"max_batch must be >= 1, got {max_batch}")
    if device != "cpu" and not device.startswith("cuda"):
        raise EngineError(f"unknown device {device!r} (expected cpu, cuda or cuda:N)")
    src = str(source) if source is not None else None
    if src is not None and random_init is not None:
        raise EngineError("give a source file or random_init, not both")
    if src is None and random_init is None:
        raise EngineError("no model: give a checkpoint / engine file, or random_init")
    if src is not None and Path(src).suffix.lower() in ENGINE_SUFFIXES:
        return _load_engine_file(src, backend=backend, precision=precision, device=device,
                                 max_batch=max_batch, window=window, text_prompt=text_prompt,
                                 threads=threads, cache_dir=cache_dir)
    if src is not None and not Path(src).is_file():
        raise EngineError(f"model file {src} does not exist")
    kw = dict(precision=precision, device=device, max_batch=max_batch, window=window,
              cache_dir=cache_dir, random_init=random_init, text_prompt=text_prompt,
              threads=threads)
    if backend != "auto":
        engine = _BUILDERS[backend](src, **kw)
        engine.description["selection"] = {"requested": backend, "chosen": backend}
        return engine
    return _auto(src, **kw)


def _load_engine_file(path: str, *, backend: str, precision: str, device: str, max_batch: int,
                      window: tuple[int, int] | None, text_prompt: str | None,
                      threads: int | None, cache_dir: str | None) -> Engine:
    from engines.backends.sidecar import read_sidecar

    kind = ENGINE_SUFFIXES[Path(path).suffix.lower()]
    if backend not in ("auto", kind):
        raise EngineError(f"{path} is a {kind} engine file; backend {backend!r} cannot run it "
                          f"(use backend {kind} or auto, or give the checkpoint instead)")
    meta = read_sidecar(path)
    if meta["backend"] != kind:
        raise EngineError(f"{path}: its sidecar says backend {meta['backend']!r}, the file "
                          f"suffix says {kind!r}")
    if window is not None and tuple(window) != tuple(meta["window"]):
        raise EngineError(f"engine {path} is built for window {tuple(meta['window'])}, "
                          f"{tuple(window)} requested; re-export with --window "
                          f"{window[0]}x{window[1]}")
    if text_prompt and meta.get("text_prompt") not in (None, text_prompt):
        raise EngineError(f"engine {path} has the prompt {meta['text_prompt']!r} built in, "
                          f"{text_prompt!r} requested; export one engine per prompt")
    if precision != meta["precision"] and precision != "fp32":
        # fp32 is the default, so only an explicit different request is a conflict.
        raise EngineError(f"engine {path} is {meta['precision']}, {precision} requested")
    if kind == "onnx":
        from engines.backends.onnx_backend import OrtEngine

        engine: Engine = OrtEngine(path, device=device, max_batch=max_batch, threads=threads,
                                   cache_dir=cache_dir, meta=meta)
    else:
        from engines.backends.tensorrt_backend import TrtEngine

        engine = TrtEngine(path, device=device, max_batch=max_batch, meta=meta)
    engine.description["selection"] = {"requested": backend, "chosen": kind,
                                       "reason": "engine file"}
    return engine


def _build_torch(src: str | None, *, precision: str, device: str, max_batch: int,
                 window: tuple[int, int] | None, cache_dir: str | None,
                 random_init: str | None, text_prompt: str | None,
                 threads: int | None) -> Engine:
    from engines.backends.torch_backend import TorchEngine
    from engines.export import load_source_model

    if precision == "int8":
        raise EngineError("the torch backend has no int8; int8 engines run on onnx / tensorrt")
    model, digest, _ = load_source_model(src, random_init=random_init, text_prompt=text_prompt)
    return TorchEngine(model, device=device, precision=precision, max_batch=max_batch,
                       window=window, checkpoint_hash=digest, source=src or random_init,
                       threads=threads)


def _build_onnx(src: str | None, *, precision: str, device: str, max_batch: int,
                window: tuple[int, int] | None, cache_dir: str | None,
                random_init: str | None, text_prompt: str | None,
                threads: int | None) -> Engine:
    from engines.backends.onnx_backend import OrtEngine, choose_providers
    from engines.export import ensure_engine

    choose_providers(device, precision, cache_dir=cache_dir)  # fail before exporting anything
    path = ensure_engine(src, cache_dir=cache_dir, backend="onnx", precision=precision,
                         max_batch=max_batch, window=window, random_init=random_init,
                         text_prompt=text_prompt)
    return OrtEngine(path, device=device, max_batch=max_batch, threads=threads,
                     cache_dir=cache_dir)


def _build_tensorrt(src: str | None, *, precision: str, device: str, max_batch: int,
                    window: tuple[int, int] | None, cache_dir: str | None,
                    random_init: str | None, text_prompt: str | None,
                    threads: int | None) -> Engine:
    from engines.backends.tensorrt_backend import TrtEngine, import_tensorrt
    from engines.export import ensure_engine

    if not device.startswith("cuda"):
        raise EngineError(f"TensorRT needs a CUDA device, not {device!r}")
    import_tensorrt()  # fail before exporting anything
    path = ensure_engine(src, cache_dir=cache_dir, backend="tensorrt", precision=precision,
                         max_batch=max_batch, window=window, random_init=random_init,
                         text_prompt=text_prompt, device=device)
    return TrtEngine(path, device=device, max_batch=max_batch)


_BUILDERS: dict[str, Any] = {"torch": _build_torch, "onnx": _build_onnx,
                             "tensorrt": _build_tensorrt}


def _auto(src: str | None, **kw: Any) -> Engine:
    device = kw["device"]
    order = ["tensorrt", "onnx", "torch"]
    rejected: dict[str, str] = {}
    if device == "cpu":
        reason = "device is cpu (TensorRT runs on NVIDIA GPUs only)"
        try:
            import tensorrt  # noqa: F401
        except ImportError as e:
            reason += f" and TensorRT is not installed ({e})"
        rejected["tensorrt"] = reason
        order.remove("tensorrt")
    for name in order:
        try:
            engine = _BUILDERS[name](src, **kw)
        except EngineError as e:
            rejected[name] = str(e)
            continue
        why = {"onnx": "fastest available for this device",
               "torch": "no faster backend worked"}.get(name, "fastest backend")
        engine.description["selection"] = {"requested": "auto", "chosen": name, "reason": why,
                                           "rejected": dict(rejected)}
        log.info("engine_selected", backend=name, engine=engine.engine_id, device=device,
                 provider=engine.description.get("provider", name), reason=why,
                 **{f"not_{k}": v for k, v in rejected.items()})
        return engine
    details = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    raise EngineError(f"no backend could run this model on {device} ({kw['precision']}): "
                      f"{details}")
