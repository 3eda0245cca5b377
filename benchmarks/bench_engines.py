"""CPU engine benchmark: tiles/s per backend and precision, one run, ratios side by side.

Models: the small config (``ebc-tiny-rn``) and the released CLIP-EBC architectures RN50 and
ViT-B-16 with random weights (speed does not depend on the weights; the INT8 count deviation is
that of a random model on the demo clip, so it measures quantisation noise, not accuracy). Each
runs at the pipeline's defaults: the model's own window (224 tiny / 448 RN50 / 224 ViT-B-16) and
batch 8 (``model.batch``).

Run (keep it niced; big models take minutes on 2 cores)::

    nice -n 10 .venv/bin/python benchmarks/bench_engines.py --threads 2 --iters 3
    nice -n 10 .venv/bin/python benchmarks/bench_engines.py --models RN50 --iters 2

Targets (issue 4): ONNX Runtime fp32 >= torch eager; INT8 >= 2x ONNX Runtime fp32 with count
deviation <= 2%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = ("tiny", "RN50", "ViT-B-16")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--int8-frames", type=int, default=8)
    p.add_argument("--ops", default=None,
                   help="INT8: comma list of op types to quantise (default MatMul,Gemm,Conv)")
    args = p.parse_args(argv)

    import torch

    from calibrate.bench import bench_source, format_table, machine
    from pipeline.commands.bench import _official_checkpoint

    torch.set_num_threads(args.threads)
    combos = [("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")]
    ops = tuple(args.ops.split(",")) if args.ops else None
    all_rows = []
    t0 = time.monotonic()
    for name in args.models.split(","):
        if name not in MODELS:
            p.error(f"unknown model {name!r} (expected {', '.join(MODELS)})")
        with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
            if name == "tiny":
                rows = bench_source(None, label="ebc-tiny-rn", random_init="ebc-tiny-rn",
                                    combos=combos, batch=args.batch, iters=args.iters,
                                    threads=args.threads, int8_frames=args.int8_frames,
                                    int8_ops=ops)
            else:
                ckpt = _official_checkpoint(name, None, Path(tmp))
                rows = bench_source(ckpt, label=f"CLIP-EBC {name} (random weights)",
                                    combos=combos, batch=args.batch, iters=args.iters,
                                    threads=args.threads, int8_frames=args.int8_frames,
                                    int8_ops=ops)
        all_rows.extend(rows)
        print(format_table(rows), flush=True)
    print()
    print(f"machine: {machine()}; {args.threads} threads per engine; "
          f"{time.monotonic() - t0:.0f} s in all")
    print(format_table(all_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
