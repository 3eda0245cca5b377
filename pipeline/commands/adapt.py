"""``crowdstream adapt CAMERA --config SITE.yaml``: a model of the camera's own.

Fine-tunes a base model (``--base`` checkpoint or released model name; default: the shipped
general model, else the camera's current model) on what is known about the camera: its labeled
frames (``<run_dir>/labels/<camera>/labels.json`` or ``--labels``; ``--import`` adds a Label
Studio / CVAT / COCO export first) and unlabeled footage (``--footage FILE|URL``, ``--minutes``
of it). A quarter of the labeled frames is held back: the camera is pointed at the adapted model
(``cameras.<camera>.model.checkpoint`` in the YAML, comments kept) only when it counts them
better than the base; both figures are printed either way. With footage only nothing can be
checked, so ``--accept-unverified`` is required. Exit status: 0 when the camera now uses the
adapted model (or ``--no-config-update`` wrote it aside), 1 when it keeps its base, 2 for bad
input. See ``pipeline.adapt`` and ``engines.train.adapt`` for what is trained and how.

Example::

    crowdstream snapshot lobby --config site.yaml --count 8 --every 30
    crowdstream labels import lobby export.json --config site.yaml
    crowdstream adapt lobby --config site.yaml --footage rtsp://cam/1 --minutes 10
    crowdstream adapt lobby --config site.yaml --footage lobby.mp4 --accept-unverified
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("camera", help="the camera's name in the config")
    p.add_argument("--config", required=True, help="the run configuration (YAML)")
    p.add_argument("--base", default=None, metavar="PATH|NAME",
                   help="model to adapt: a checkpoint (.pt) or a released model's name "
                        "(default: engines/models/shipped/general.pt when shipped, else the camera's "
                        "current model)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="labels file (default: <run_dir>/labels/<camera>/labels.json)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE",
                   help="first import a Label Studio JSON, CVAT for images XML or COCO keypoints "
                        "export into the labels file (repeatable; format auto-detected)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="with --import: where the exported images are, when not beside the "
                        "labels file")
    p.add_argument("--footage", default=None, metavar="FILE|URL",
                   help="unlabeled footage of the camera: a recording or a live URL")
    p.add_argument("--minutes", type=float, default=None,
                   help="minutes of footage to use (a live URL is recorded this long; a file: "
                        "its first N minutes, default all of it)")
    p.add_argument("--train-minutes", type=float, default=5.0,
                   help="time budget of the fine-tuning (default 5)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--holdout", type=float, default=0.25,
                   help="share of the labeled frames held back to check the result (default "
                        "0.25, at least one frame)")
    p.add_argument("--accept-unverified", action="store_true",
                   help="with footage only: point the camera at the adapted model although no "
                        "labeled frame can check it")
    p.add_argument("--no-config-update", dest="update_config", action="store_false",
                   help="write the adapted model, leave the config as it is")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="the adapted checkpoint (default: <run_dir>/adapt/<camera>/...pt)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 3e-5 with labeled frames, 1e-5 footage only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adabn", action="store_true",
                   help="re-estimate BatchNorm statistics on the camera's frames before training "
                        "(off by default: it can move the count level, see the README)")
    p.add_argument("--pairs", type=int, default=60,
                   help="footage frame pairs kept in memory (default 60)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def main(args: argparse.Namespace) -> int:
    import torch

    from engines.progress import Progress
    from engines.train.labelimport import LabelsError
    from pipeline.adapt import AdaptError, AdaptRequest, adapt_camera, redacted_command

    if args.threads:
        torch.set_num_threads(args.threads)
    req = AdaptRequest(
        config=Path(args.config), camera=args.camera, base=args.base,
        labels=Path(args.labels) if args.labels else None,
        imports=[Path(p) for p in args.imports],
        images_dir=Path(args.images) if args.images else None, footage=args.footage,
        minutes=args.minutes, train_minutes=args.train_minutes, steps=args.steps,
        holdout=args.holdout, accept_unverified=args.accept_unverified,
        update_config=args.update_config, out=Path(args.out) if args.out else None,
        lr=args.lr, seed=args.seed, adabn=args.adabn, footage_pairs=args.pairs,
        command=redacted_command(["crowdstream", "adapt", *sys.argv[2:]]))
    if not 0.0 < req.holdout < 1.0:
        return _fail(f"--holdout must be in (0, 1), got {req.holdout:g}")
    total = args.steps
    progress = Progress(total=total, label="adapt", every_s=1.0, enabled=not args.quiet)

    def on_step(step: int, seconds: float, parts: dict[str, float]) -> None:
        info = ", ".join(f"{k} {v:.3g}" for k, v in parts.items())
        progress.update(done=step, info=f"step {step}, {seconds:.0f} s of "
                                        f"{args.train_minutes * 60:.0f}: {info}")

    try:
        with progress:
            out = adapt_camera(req, say=progress.print, on_step=on_step)
    except (AdaptError, LabelsError, FileNotFoundError) as e:
        return _fail(str(e))
    print(out.message)
    return 0 if out.accepted or not out.verified else 1


def _fail(message: str) -> int:
    print(f"crowdstream adapt: {message}", file=sys.stderr)
    return 2
