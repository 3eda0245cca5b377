"""``crowdstream eval MODEL --data DIR [--format json] [--select 701-800] [--out DIR]``.

Counts every annotated image of a dataset with a checkpoint (``.pt``) or an engine file
(``.onnx`` / ``.plan``), prints MAE and RMSE, and writes ``errors.csv`` (per image / frame) and
``counts.png`` (true vs predicted count over the images, drawn with OpenCV) into ``--out``.
``--overlap`` sets the sliding-window overlap; images larger than the model's window are tiled.

For a video, ``--video-counts counts.jsonl`` reads the JSON-lines output of ``crowdstream run``
(one record per frame with ``frame_index``/``count``) and scores it against the dataset's
annotated frames (matched by frame index), so the real pipeline is what gets measured.

Example::

    crowdstream eval configs/demo/mall_demo_model.pt --data ../shared/data/mall \\
        --format json --select 701-800 --out runs/eval_mall
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint (.pt) or engine file (.onnx/.plan); not needed with "
                        "--video-counts")
    p.add_argument("--data", default=None, help="dataset folder")
    p.add_argument("--train-config", default=None, metavar="YAML",
                   help="score the held-back parts of a training config's sources instead of "
                        "--data: exactly the images its trainer validated on (per source)")
    p.add_argument("--source", action="append", default=None, metavar="NAME",
                   help="with --train-config: only these sources (repeatable)")
    p.add_argument("--format", default="json",
                   help="dataset format: shanghaitech, qnrf, nwpu, jhu, json (default json)")
    p.add_argument("--split", default=None, help="split name (format-specific)")
    p.add_argument("--select", default=None, help="1-based positions to keep, e.g. 701-800")
    p.add_argument("--overlap", type=float, default=0.0, help="sliding-window overlap [0, 1)")
    p.add_argument("--tiling", choices=["plain", "clip_count"], default="plain",
                   help="clip_count: CLIP-Count's official evaluation strip (384-high, stride "
                        "128, sigmoid blend) instead of the plain windows")
    p.add_argument("--backend", default="torch",
                   help="engine backend for a checkpoint: torch (default), onnx, tensorrt, auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--video-counts", default=None, metavar="JSONL",
                   help="score per-frame counts written by `crowdstream run` instead of a model")
    p.add_argument("--count-field", default="raw_count",
                   help="JSON field scored with --video-counts (raw_count or the smoothed count)")
    p.add_argument("--frame-offset", type=int, default=0,
                   help="dataset frame_index = video frame_index + this (--video-counts)")
    p.add_argument("--camera", default=None, help="camera name to read from --video-counts")
    p.add_argument("--out", default=None, help="folder for errors.csv and counts.png")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engines.log import get_logger
    from engines.train.datasets import load_dataset
    from engines.train.evaluate import EvalResult, evaluate, records_from_jsonl, write_count_plot

    log = get_logger("eval")
    if args.train_config:
        return _held_out(args)
    if not args.data:
        print("crowdstream eval: give --data DIR (a dataset) or --train-config YAML (the held-back "
              "parts of a training run)", file=sys.stderr)
        return 2
    samples = load_dataset(args.data, args.format, split=args.split, select=args.select)
    if args.video_counts:
        result = EvalResult(records_from_jsonl(args.video_counts, samples, field=args.count_field,
                                                frame_offset=args.frame_offset,
                                                camera=args.camera))
        source = args.video_counts
    else:
        if not args.model:
            print("crowdstream eval: give a MODEL (checkpoint or engine) or --video-counts")
            return 2
        model = _load(args)
        n = len(samples)

        def progress(i: int, rec: object) -> None:
            if (i + 1) % 25 == 0 or i + 1 == n:
                log.info("progress", images=f"{i + 1}/{n}")

        result = evaluate(model, samples, overlap=args.overlap, on_image=progress,
                          tiling=args.tiling)
        source = args.model
    summary = {"source": str(source), "data": str(args.data), "select": args.select,
               **result.summary()}
    if args.out:
        out = Path(args.out)
        summary["csv"] = str(result.write_csv(out / "errors.csv"))
        summary["plot"] = str(write_count_plot(out / "counts.png", result.records,
                                               title=Path(str(source)).name))
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def _held_out(args: argparse.Namespace) -> int:
    """Per-source MAE/RMSE on the parts a training config holds back (its own split)."""
    from engines.train.config import load_train_config
    from engines.train.evaluate import evaluate
    from engines.train.trainer import Trainer

    if not args.model:
        print("crowdstream eval: --train-config scores a MODEL (checkpoint or engine)",
              file=sys.stderr)
        return 2
    cfg = load_train_config(args.train_config)
    sets = Trainer(cfg, quiet=True).validation_sets(args.source)
    model = _load(args)
    out = {"source": str(args.model), "train_config": args.train_config, "sets": {}}
    for label, items in sets:
        res = evaluate(model, [p.sample for p in items], overlap=args.overlap,
                       images=[p.rgb(cfg) for p in items], tiling=args.tiling)
        out["sets"][label] = res.summary()
    print(json.dumps(out, indent=2))
    return 0


def _load(args: argparse.Namespace) -> object:
    from pathlib import Path

    path = Path(args.model)
    if path.suffix == ".pt" and args.backend == "torch":
        import torch

        from engines.checkpoint import load_checkpoint

        if args.threads:
            torch.set_num_threads(args.threads)
        model, _ = load_checkpoint(path, device=args.device)
        return model
    from engines.backends import load_engine

    return load_engine(str(path), backend=args.backend, device=args.device,
                       threads=args.threads)
