"""``crowdstream bench``: tiles/s per backend and precision for one model, side by side.

Example::

    crowdstream bench runs/train/model.pt --batch 8 --iters 5 --threads 2
    crowdstream bench --random-init ebc-tiny-rn --combos torch:fp32,onnx:fp32,onnx:int8
    crowdstream bench --official RN50 --window 384x384 --iters 3

``--official NAME`` builds the released CLIP-EBC architecture (open_clip ``RN50``,
``ViT-B-16``...) with random weights, which is enough for speed. INT8 rows are calibrated on a
few frames of ``--video`` (default the demo clip) and report the count deviation against fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.commands.export import parse_window


def parse_combos(text: str) -> list[tuple[str, str]]:
    """``"torch:fp32,onnx:int8"`` -> [("torch", "fp32"), ("onnx", "int8")]."""
    out = []
    for item in text.split(","):
        backend, _, precision = item.strip().partition(":")
        if backend not in ("torch", "onnx", "tensorrt") or precision not in ("fp32", "fp16",
                                                                               "int8"):
            raise argparse.ArgumentTypeError(f"combo {item!r}: expected BACKEND:PRECISION with "
                                             "backend torch/onnx/tensorrt, precision fp32/fp16/int8")
        out.append((backend, precision))
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint or engine file")
    p.add_argument("--random-init", default=None, metavar="NAME",
                   help="a small random-init model (ebc-tiny-rn, ebc-tiny-vit, count-tiny)")
    p.add_argument("--official", default=None, metavar="BACKBONE",
                   help="released CLIP-EBC architecture with random weights (RN50, ViT-B-16)")
    p.add_argument("--combos", type=parse_combos,
                   default=parse_combos("torch:fp32,onnx:fp32,onnx:int8"),
                   help="BACKEND:PRECISION list (default torch:fp32,onnx:fp32,onnx:int8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--window", type=parse_window, default=None)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per engine")
    p.add_argument("--int8-frames", type=int, default=8,
                   help="frames of --video for INT8 calibration + held-back deviation (8)")
    p.add_argument("--video", default=None, help="video for INT8 calibration (demo clip)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")


def main(args: argparse.Namespace) -> int:
    import tempfile

    from calibrate.bench import DEMO_CLIP, bench_source, format_table, machine

    picked = [v for v in (args.checkpoint, args.random_init, args.official) if v]
    if len(picked) != 1:
        print("crowdstream bench: give one of CHECKPOINT, --random-init or --official",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="crowdstream-bench-ckpt-") as tmp:
        source = args.checkpoint
        label = Path(args.checkpoint).name if args.checkpoint else (
            args.random_init or f"clip-ebc-{args.official}")
        if args.official:
            source = _official_checkpoint(args.official, args.window, Path(tmp))
        rows = bench_source(source, label=label, combos=args.combos, batch=args.batch,
                            iters=args.iters, window=args.window, random_init=args.random_init,
                            threads=args.threads, warmup=args.warmup,
                            int8_frames=args.int8_frames, device=args.device,
                            video=Path(args.video) if args.video else DEMO_CLIP)
    print(f"machine: {machine()}; threads {args.threads or 'default'}; device {args.device}")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _official_checkpoint(backbone: str, window: tuple[int, int] | None, tmp: Path) -> str:
    """Save a random-weight released-architecture CLIP-EBC model as one of our checkpoints."""
    import torch

    from engines.checkpoint import save_checkpoint
    from engines.models import create_model
    from engines.models.official import official_ebc_spec

    # random weights: the anchors (data set) do not change the speed
    spec = official_ebc_spec(backbone, "nwpu", window=window[0] if window else None)
    if window:
        spec = spec.replace(window=window)
    torch.manual_seed(0)
    model = create_model(spec)
    return str(save_checkpoint(tmp / f"clip-ebc-{backbone}.pt", model, {"random_init": True}))
