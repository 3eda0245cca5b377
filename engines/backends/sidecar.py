"""Engine sidecar JSON: what an engine file was built from and for, checked before loading.

Every engine file ``NAME.onnx`` / ``NAME.plan`` has ``NAME.onnx.json`` / ``NAME.plan.json`` beside
it. It records the backend, precision, window, block size, batch range, input/output names, the
source checkpoint's hash, the engine file's own SHA-256 and, for TensorRT plans, the TensorRT
version, GPU name and compute capability the plan was built on (plans only run there).

Example::

    write_sidecar("engines/m.onnx", {"backend": "onnx", "precision": "fp32", ...})
    meta = read_sidecar("engines/m.onnx")        # raises EngineError naming what is wrong
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from engines.backends.base import EngineError

FORMAT = "crowdstream-engine"
FORMAT_VERSION = 1

# key -> (accepted types, description used in error messages)
_REQUIRED: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((str,), f'"{FORMAT}"'),
    "format_version": ((int,), "an integer"),
    "backend": ((str,), '"onnx" or "tensorrt"'),
    "precision": ((str,), '"fp32", "fp16" or "int8"'),
    "window": ((list,), "[height, width]"),
    "block_size": ((int,), "an integer"),
    "batch": ((dict,), '{"min": 1, "opt": N, "max": N}'),
    "input_name": ((str,), "the engine's input tensor name"),
    "output_name": ((str,), "the engine's output tensor name"),
    "engine_sha256": ((str,), "the SHA-256 of the engine file"),
}


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _rebuild_hint(meta: dict[str, Any] | None = None) -> str:
    ckpt = (meta or {}).get("checkpoint") or "CHECKPOINT"
    backend = (meta or {}).get("backend", "onnx")
    precision = (meta or {}).get("precision", "fp32")
    return (f"rebuild it with `crowdstream export {ckpt} --backend {backend} "
            f"--precision {precision}` (int8: `crowdstream calibrate int8 CONFIG`)")


def write_sidecar(engine_path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write ``meta`` (plus format, hash of the engine file, creation time) beside the engine.

    Written to a temporary name and renamed, so a reader never sees half a sidecar.
    """
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **meta,
           "engine_file": Path(engine_path).name,
           "engine_sha256": sha256_file(engine_path)}
    out = sidecar_path(engine_path)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return out


def read_sidecar(engine_path: str | os.PathLike[str], *, verify_hash: bool = True) -> dict[str, Any]:
    """Load and check an engine's sidecar; raise :class:`EngineError` saying what is wrong.

    Checks: the sidecar exists and is JSON, has every required key with the right type, was
    written by a format version this code reads, and (``verify_hash``) the engine file is the one
    the sidecar describes.
    """
    engine = Path(engine_path)
    side = sidecar_path(engine)
    if not engine.is_file():
        raise EngineError(f"engine file {engine} does not exist")
    if not side.is_file():
        raise EngineError(f"engine {engine} has no sidecar {side}: it was not built by crowdstream "
                          f"export, or the sidecar was lost; {_rebuild_hint()}")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"engine sidecar {side} is broken ({e}); {_rebuild_hint()}") from e
    if not isinstance(meta, dict):
        raise EngineError(f"engine sidecar {side} is broken: expected a JSON object, got "
                          f"{type(meta).__name__}; {_rebuild_hint()}")
    for key, (types, what) in _REQUIRED.items():
        if key not in meta:
            raise EngineError(f"engine sidecar {side} is broken: key '{key}' is missing "
                              f"(expected {what}); {_rebuild_hint(meta)}")
        if not isinstance(meta[key], types) or isinstance(meta[key], bool):
            raise EngineError(f"engine sidecar {side} is broken: '{key}' is "
                              f"{meta[key]!r}, expected {what}; {_rebuild_hint(meta)}")
    if meta["format"] != FORMAT:
        raise EngineError(f"{side} is not a crowdstream engine sidecar (format "
                          f"{meta['format']!r}, expected {FORMAT!r})")
    if meta["format_version"] != FORMAT_VERSION:
        raise EngineError(f"engine {engine} was written with sidecar format version "
                          f"{meta['format_version']}, this crowdstream reads version "
                          f"{FORMAT_VERSION}; {_rebuild_hint(meta)}")
    w = meta["window"]
    if len(w) != 2 or not all(isinstance(v, int) and v > 0 for v in w):
        raise EngineError(f"engine sidecar {side} is broken: 'window' is {w!r}, expected "
                          f"[height, width] positive integers; {_rebuild_hint(meta)}")
    b = meta["batch"]
    if not all(isinstance(b.get(k), int) and b[k] >= 1 for k in ("min", "max")) or b["min"] > b["max"]:
        raise EngineError(f"engine sidecar {side} is broken: 'batch' is {b!r}, expected "
                          f'{{"min": 1, "max": N}}; {_rebuild_hint(meta)}')
    if meta["backend"] not in ("onnx", "tensorrt"):
        raise EngineError(f"engine sidecar {side}: unknown backend {meta['backend']!r} "
                          f"(expected onnx or tensorrt)")
    if meta["precision"] not in ("fp32", "fp16", "int8"):
        raise EngineError(f"engine sidecar {side}: unknown precision {meta['precision']!r}")
    if verify_hash:
        actual = sha256_file(engine)
        if actual != meta["engine_sha256"]:
            raise EngineError(f"engine {engine} does not match its sidecar {side} (file SHA-256 "
                              f"{actual[:12]}…, sidecar says {meta['engine_sha256'][:12]}…): the "
                              f"file was replaced or is corrupt; {_rebuild_hint(meta)}")
    return meta


def check_tensorrt_compat(meta: dict[str, Any], *, trt_version: str, gpu_name: str,
                          compute_capability: str, engine_path: str | os.PathLike[str]) -> None:
    """Refuse a TensorRT plan built for another TensorRT version or GPU.

    TensorRT plans are only valid on the exact TensorRT version and GPU model (compute
    capability) they were built with; deserialising elsewhere fails or misbehaves.
    """
    built = meta.get("tensorrt")
    if not isinstance(built, dict) or not all(
            isinstance(built.get(k), str) for k in ("version", "gpu_name", "compute_capability")):
        raise EngineError(f"engine sidecar {sidecar_path(engine_path)} is broken: a TensorRT plan "
                          f"needs 'tensorrt': {{version, gpu_name, compute_capability}}; "
                          f"{_rebuild_hint(meta)}")
    problems = []
    if built["version"] != trt_version:
        problems.append(f"TensorRT {built['version']} (this machine has {trt_version})")
    if built["compute_capability"] != compute_capability or built["gpu_name"] != gpu_name:
        problems.append(f"GPU {built['gpu_name']} sm_{built['compute_capability']} (this machine "
                        f"has {gpu_name} sm_{compute_capability})")
    if problems:
        raise EngineError(f"TensorRT plan {engine_path} was built for " + " and ".join(problems)
                          + "; plans only run where they were built: "
                          + _rebuild_hint({**meta, "backend": "tensorrt"})
                          + " on this machine, or point the config at the checkpoint so the "
                          "engine is rebuilt and cached here")
