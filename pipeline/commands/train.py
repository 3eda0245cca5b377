"""``crowdstream train CONFIG.yaml [--resume OUT_DIR/state.pt] [--set KEY=VALUE ...]``.

Trains a CLIP-EBC model as the trainer config describes (``engines.train.config``) and writes
``best.pt``, ``last.pt``, ``state.pt`` and ``metrics.csv`` to the config's ``out_dir``. ``--export``
copies the best checkpoint to a path of your choice when training ends.

Example::

    crowdstream train configs/train_mall_demo.yaml --set optim.epochs=5 --out-dir runs/try
"""

from __future__ import annotations

import argparse
import json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="trainer YAML (see configs/train_mall_demo.yaml)")
    p.add_argument("--resume", default=None,
                   help="continue from a training state (OUT_DIR/state.pt or OUT_DIR)")
    p.add_argument("--out-dir", default=None, help="override out_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.epochs=3 (repeatable)")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="copy the best checkpoint here when training ends")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    import shlex
    import shutil
    from pathlib import Path

    from engines.train.config import load_train_config, parse_set
    from engines.train.trainer import Trainer

    overrides = parse_set(args.set)
    if args.out_dir:
        overrides["out_dir"] = str(Path(args.out_dir).resolve())
    cfg = load_train_config(args.config, overrides=overrides)
    if not cfg.card.command:  # the model card records how its checkpoint was made
        command = shlex.join(["crowdstream", "train", args.config]
                             + [f"--set={s}" for s in args.set])
        cfg = cfg.model_copy(update={"card": cfg.card.model_copy(update={"command": command})})
    summary = Trainer(cfg, quiet=args.quiet, config_path=args.config).fit(resume=args.resume)
    best = Path(cfg.out_dir) / "best.pt"
    if args.export and best.is_file():
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, args.export)
    summary.pop("history", None)
    print(json.dumps(summary, indent=2, default=str))
    return 0
