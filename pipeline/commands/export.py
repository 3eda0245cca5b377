"""``crowdstream export CHECKPOINT``: build an engine file (ONNX or TensorRT plan) + sidecar.

Example::

    crowdstream export runs/train/model.pt --backend onnx --batch 8 --window 384x384 \\
        --out runs/demo/engines
    crowdstream export runs/train/model.pt --backend tensorrt --precision fp16 --device cuda

The engine goes into ``--out`` (default: ``engines/`` beside the checkpoint) under the same
content-hashed name the pipeline's engine cache uses, so pointing ``model.cache_dir`` there
reuses it. INT8 engines need calibration frames: ``crowdstream calibrate int8 CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_window(text: str) -> tuple[int, int]:
    """``"384x384"`` / ``"384"`` -> (384, 384); argparse-friendly error otherwise."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"window {text!r}: expected HxW such as 384x384") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"window {text!r}: expected HxW such as 384x384")
    return (values[0], values[1])


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="one of our model checkpoints (.pt)")
    p.add_argument("--random-init", default=None, metavar="NAME",
                   help="export a small random-init model instead (ebc-tiny-rn, ...)")
    p.add_argument("--backend", choices=["onnx", "tensorrt"], default="onnx")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--batch", type=int, default=8, help="largest batch the engine takes (8)")
    p.add_argument("--window", type=parse_window, default=None,
                   help="tile size HxW (default: the model's own window)")
    p.add_argument("--text-prompt", default=None,
                   help="CLIP-Count: what to count; baked into the engine")
    p.add_argument("--device", default="cuda", help="GPU to build a TensorRT plan on (cuda)")
    p.add_argument("--out", default=None,
                   help="engines directory (default: engines/ beside the checkpoint)")


def main(args: argparse.Namespace) -> int:
    from engines.backends.base import EngineError
    from engines.backends.sidecar import read_sidecar
    from engines.export import ensure_engine

    if (args.checkpoint is None) == (args.random_init is None):
        print("crowdstream export: give a CHECKPOINT or --random-init NAME", file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"crowdstream export: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    if args.backend == "onnx" and args.precision == "int8":
        print("crowdstream export: ONNX INT8 engines are calibrated on your own frames; run "
              "`crowdstream calibrate int8 CONFIG`", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (
        Path(args.checkpoint).resolve().parent / "engines" if args.checkpoint
        else Path("engines"))
    try:
        path = ensure_engine(args.checkpoint, cache_dir=out, backend=args.backend,
                             precision=args.precision, max_batch=args.batch, window=args.window,
                             random_init=args.random_init, text_prompt=args.text_prompt,
                             device=args.device)
        meta = read_sidecar(path)
    except EngineError as e:
        print(f"crowdstream export: {e}", file=sys.stderr)
        return 1
    summary = {k: meta.get(k) for k in ("backend", "precision", "window", "block_size", "batch",
                                        "checkpoint_hash", "text_prompt", "export_check_rel_l2",
                                        "tensorrt")}
    print(f"engine: {path}")
    print(f"sidecar: {path}.json")
    print(json.dumps(summary, indent=2))
    return 0
