"""Export a counting model to an engine file (ONNX, or a TensorRT plan built from it) + sidecar.

ONNX: ``torch.onnx.export(..., opset_version=17, dynamo=False)`` (the dynamo exporter needs
``onnxscript``, which torch does not install), a fixed window and a dynamic batch axis. Text
features are buffers of the model, so they become constants of the graph: one engine per prompt.
Every export is checked by running ONNX Runtime on two random tiles against torch; the relative
L2 difference goes into the sidecar.

Engines built from a checkpoint are cached by content: the key hashes the checkpoint's bytes, the
prompt, the window, the batch limit, the precision and the exporter version. The cache is the
user's folder :func:`engines.paths.engine_cache_dir`, shared by every run (a config's
``model.cache_dir`` or ``cache_dir=`` here moves it), so a checkpoint exports once and every later
run, of any config, reuses the file.

Example::

    path = ensure_engine("ckpt.pt", cache_dir=None, backend="onnx", precision="fp32",
                         max_batch=8)
    # -> ~/.cache/crowdstream/engines/ckpt-onnx-fp32-<key>.onnx (+ .onnx.json)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.backends.base import EngineError
from engines.backends.sidecar import read_sidecar, sidecar_path, write_sidecar
from engines.log import get_logger
from engines.paths import engine_cache_dir

if TYPE_CHECKING:
    from engines.models import CountingModel

log = get_logger("export")

OPSET = 17
EXPORT_VERSION = 1  # bump when the exported graph changes for the same checkpoint
INPUT_NAME = "tiles"
OUTPUT_NAME = "density"


def resolve_window(model: CountingModel, window: tuple[int, int] | None) -> tuple[int, int]:
    """``window`` or the model's own; checked against its block size."""
    win = tuple(window) if window else tuple(model.spec.window)
    block = int(model.block_size)
    if len(win) != 2 or win[0] % block or win[1] % block or min(win) <= 0:
        raise EngineError(f"window {win} must be (height, width), multiples of the model's block "
                          f"size {block}")
    return (int(win[0]), int(win[1]))


def load_source_model(source: str | None, *, random_init: str | None = None,
                      text_prompt: str | None = None, seed: int = 0
                      ) -> tuple[CountingModel, str, dict[str, Any]]:
    """(model, content hash, info) from one of our checkpoints or a small random-init spec.

    ``text_prompt`` switches a text-prompted model (CLIP-Count) to that class; models that count
    a fixed class ignore it. The hash of a random-init model covers its spec and seed.
    """
    import torch

    if (source is None) == (random_init is None):
        raise EngineError("give exactly one of a checkpoint path or random_init (a small spec "
                          "name such as 'ebc-tiny-rn')")
    if random_init is not None:
        from engines.models import create_model, model_class, small_spec

        try:
            spec = small_spec(random_init)
        except ValueError as e:
            raise EngineError(f"unknown random_init {random_init!r}: {e}") from e
        if text_prompt and model_class(spec.family).text_prompted:
            spec = spec.replace(text_prompt=text_prompt)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(spec)
        digest = source_digest(None, random_init, seed)
        info = {"checkpoint": None, "random_init": random_init, "seed": seed}
    else:
        from engines.checkpoint import load_checkpoint

        path = Path(source)  # type: ignore[arg-type]
        digest = source_digest(str(path), None)
        model, metadata = load_checkpoint(str(path))
        info = {"checkpoint": str(path), "checkpoint_metadata": _jsonable(metadata)}
    model = _apply_prompt(model, text_prompt)
    model.eval()
    return model, digest, info


def _apply_prompt(model: CountingModel, text_prompt: str | None) -> CountingModel:
    """Switch a text-prompted model to ``text_prompt``; other models count a fixed class."""
    if text_prompt and model.text_prompted and model.spec.text_prompt != text_prompt:
        model.set_text_prompt(text_prompt)
    return model


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def export_onnx(model: Any, out_path: str | os.PathLike[str], *, window: tuple[int, int],
                check: bool = True) -> float | None:
    """Write ``model`` to ONNX at ``out_path`` (fixed window, dynamic batch).

    Returns the relative L2 difference ORT vs torch on two random tiles when ``check``.
    """
    import torch

    class _Wrapper(torch.nn.Module):
        """Pins the exported signature to ``tiles -> density`` whatever forward's extras are."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    wrapper = _Wrapper(model).eval().cpu().float()
    gen = torch.Generator().manual_seed(1234)
    dummy = torch.rand((2, 3, *window), generator=gen)
    with torch.inference_mode():
        ref = wrapper(dummy)
    block = int(model.block_size)
    expect = (2, 1, window[0] // block, window[1] // block)
    if tuple(ref.shape) != expect:
        raise EngineError(f"model output is {tuple(ref.shape)} for a window {window}, expected "
                          f"{expect} (model contract: (B, 1, H/b, W/b))")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log.info("onnx_export_start", file=str(out), window=f"{window[0]}x{window[1]}", opset=OPSET)
    # nn.MultiheadAttention's inference fast path traces to aten::_native_multi_head_attention,
    # which has no ONNX symbolic; the regular path exports to MatMul/Softmax.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The window is fixed per engine, so shape-dependent Python branches being traced
            # as constants is intended.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, chosen
            torch.onnx.export(
                wrapper, (dummy,), str(out), input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET, do_constant_folding=True, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    log.info("onnx_export_done", file=str(out), seconds=round(time.monotonic() - t0, 1),
             mb=round(out.stat().st_size / 1e6, 1))
    if not check:
        return None
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: dummy.numpy()})[0]
    return relative_l2(got, ref.numpy())


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (0 when both are zero)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(a - b))
    return 0.0 if den == 0.0 and num == 0.0 else num / max(den, 1e-30)


def cache_key(source_hash: str, *, backend: str, precision: str, window: tuple[int, int],
              max_batch: int, text_prompt: str | None, extra: dict[str, Any] | None = None) -> str:
    """Content key of one engine build (16 hex chars)."""
    doc = {"source": source_hash, "backend": backend, "precision": precision,
           "window": list(window), "max_batch": max_batch, "text_prompt": text_prompt,
           "opset": OPSET, "export_version": EXPORT_VERSION, **(extra or {})}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def engine_name(source: str | None, random_init: str | None, backend: str, precision: str,
                key: str) -> str:
    """File name of a cached engine: ``<checkpoint stem>-<backend>-<precision>-<key>.<ext>``."""
    stem = Path(source).stem if source else f"random-{random_init}"
    ext = "onnx" if backend == "onnx" else "plan"
    return f"{stem}-{backend}-{precision}-{key}.{ext}"


def _cached(path: Path) -> dict[str, Any] | None:
    """The sidecar of a usable cached engine, or None (a broken one is rebuilt, with a log)."""
    if not path.is_file() or not sidecar_path(path).is_file():
        return None
    try:
        return read_sidecar(path)
    except EngineError as e:
        log.warning("engine_cache_invalid", file=str(path), reason=str(e))
        return None


def build_onnx_engine(model: CountingModel, out_path: str | os.PathLike[str], *, window: tuple[int, int],
                      max_batch: int, source_hash: str, info: dict[str, Any],
                      text_prompt: str | None = None) -> dict[str, Any]:
    """Export an fp32 ONNX engine to ``out_path`` (atomically) with its sidecar; returns it."""
    import onnx
    import torch

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        err = export_onnx(model, tmp, window=window)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    spec = model.spec
    meta = {"backend": "onnx", "precision": "fp32", "window": list(window),
            "block_size": int(model.block_size),
            "batch": {"min": 1, "opt": int(max_batch), "max": int(max_batch)},
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
            "checkpoint_hash": source_hash, **info,
            "text_prompt": (text_prompt or spec.text_prompt) if model.text_prompted else None,
            "spec": spec.to_dict(),
            "exporter": {"torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET,
                         "export_version": EXPORT_VERSION},
            "export_check_rel_l2": err}
    if err is not None and err > 1e-3:
        raise EngineError(f"exported ONNX disagrees with torch (relative L2 {err:.2e} > 1e-3); "
                          f"{out} is not usable")
    write_sidecar(out, meta)
    return read_sidecar(out)


def source_digest(source: str | None, random_init: str | None, seed: int = 0) -> str:
    """Content hash of a checkpoint's bytes, or of a random-init spec name + seed + spec.

    For a checkpoint this reads the file only (no torch), so a cache hit loads no model.
    """
    if (source is None) == (random_init is None):
        raise EngineError("give exactly one of a checkpoint path or random_init")
    if source is not None:
        from engines.checkpoint import file_hash

        if not Path(source).is_file():
            raise EngineError(f"checkpoint {source} does not exist")
        return str(file_hash(str(source)))
    from engines.models import small_spec

    try:
        spec = small_spec(random_init)  # type: ignore[arg-type]
    except ValueError as e:
        raise EngineError(f"unknown random_init {random_init!r}: {e}") from e
    return hashlib.sha256(json.dumps({"random_init": random_init, "seed": seed,
                                      "spec": spec.to_dict()}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def cached_engine_path(cache_dir: str | os.PathLike[str], *, source: str | None,
                       random_init: str | None, digest: str, backend: str, precision: str,
                       window: tuple[int, int] | None, max_batch: int,
                       text_prompt: str | None, extra: dict[str, Any] | None = None) -> Path:
    """Where the cache keeps the engine for these settings (``window`` None: the model's own)."""
    key = cache_key(digest, backend=backend, precision=precision,
                    window=tuple(window) if window else (0, 0), max_batch=max_batch,
                    text_prompt=text_prompt, extra=extra)
    return Path(cache_dir) / engine_name(source, random_init, backend, precision, key)


def ensure_engine(source: str | None, *, cache_dir: str | os.PathLike[str] | None,
                  backend: str = "onnx", precision: str = "fp32", max_batch: int = 8,
                  window: tuple[int, int] | None = None, random_init: str | None = None,
                  text_prompt: str | None = None, device: str = "cuda") -> Path:
    """The engine file for a checkpoint (or random-init spec), exported once and cached.

    ``backend`` "onnx" (fp32; int8 must come from ``crowdstream calibrate int8``, which writes
    into the same cache) or "tensorrt" (fp32/fp16/int8-from-QDQ plan, built on ``device``).
    Without ``cache_dir`` the engine goes to :func:`engines.paths.engine_cache_dir`. A cache hit
    reads the checkpoint's bytes for its hash but loads no model.
    """
    if backend not in ("onnx", "tensorrt"):
        raise EngineError(f"engine files are onnx or tensorrt, not {backend!r}")
    if backend == "onnx" and precision not in ("fp32", "int8"):
        raise EngineError(f"ONNX engines are exported fp32 (int8 via calibration), not "
                          f"{precision}; fp16 needs backend tensorrt or torch on a GPU")
    if backend == "tensorrt":
        from engines.backends.tensorrt_backend import gpu_identity, import_tensorrt

        import_tensorrt()  # before any export work: say early that TensorRT is missing
        gpu_identity(device)
    digest = source_digest(source, random_init)
    cdir = Path(cache_dir) if cache_dir else engine_cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    where = dict(source=source, random_init=random_init, digest=digest, window=window,
                 max_batch=max_batch, text_prompt=text_prompt)

    int8_path = cached_engine_path(cdir, backend="onnx", precision="int8", **where)
    if precision == "int8" and _cached(int8_path) is None:
        raise EngineError(f"no INT8 engine for this checkpoint in {cdir}: INT8 needs "
                          f"calibration on your frames; run `crowdstream calibrate int8 CONFIG` "
                          f"(it writes {int8_path.name}) or use precision fp32")
    if backend == "onnx" and precision == "int8":
        log.info("engine_cache_hit", file=str(int8_path))
        return int8_path
    onnx_path = cached_engine_path(cdir, backend="onnx", precision="fp32", **where)
    if backend == "onnx" or precision != "int8":
        if _cached(onnx_path) is None:
            log.info("engine_cache_miss", file=str(onnx_path), source=source or random_init)
            model, digest2, info = load_source_model(source, random_init=random_init,
                                                     text_prompt=text_prompt)
            build_onnx_engine(model, onnx_path, window=resolve_window(model, window),
                              max_batch=max_batch, source_hash=digest2, info=info,
                              text_prompt=text_prompt)
        else:
            log.info("engine_cache_hit", file=str(onnx_path))
        if backend == "onnx":
            return onnx_path

    from engines.backends.tensorrt_backend import build_plan, gpu_identity, import_tensorrt

    trt = import_tensorrt()
    gpu, sm = gpu_identity(device)
    plan_path = cached_engine_path(cdir, backend="tensorrt", precision=precision,
                                   extra={"trt": trt.__version__, "gpu": gpu, "sm": sm}, **where)
    if _cached(plan_path) is not None:
        log.info("engine_cache_hit", file=str(plan_path))
        return plan_path
    # INT8 plans are built from the calibrated QDQ model (explicit quantisation).
    src_onnx = int8_path if precision == "int8" else onnx_path
    side = read_sidecar(src_onnx)
    keep = {k: side.get(k) for k in ("checkpoint_hash", "checkpoint", "random_init", "spec",
                                     "text_prompt", "exporter")}
    build_plan(src_onnx, plan_path, precision=precision,
               window=(int(side["window"][0]), int(side["window"][1])),
               block_size=int(side["block_size"]), max_batch=max_batch, device=device, meta=keep)
    return plan_path
