"""``crowdstream snapshot CAMERA --config SITE.yaml``: save frames of a camera for labeling.

Each frame is decoded by the pipeline's own decoder (``engines.video``, the camera's settings) at
its full resolution and saved as JPEG beside the camera's labels file
(``<run_dir>/labels/<camera>/labels.json``, or ``--labels``), where it is added as an entry with
no labels yet: label it there (the console), or elsewhere and ``crowdstream labels import`` the
export. Then ``crowdstream adapt`` uses it.

Example::

    crowdstream snapshot lobby --config site.yaml                       # one frame, now
    crowdstream snapshot mall --config site.yaml --at 30 --count 5 --every 60   # a file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("camera", help="the camera's name in the config")
    p.add_argument("--config", required=True, help="the run configuration (YAML)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="labels file (default: <run_dir>/labels/<camera>/labels.json)")
    p.add_argument("--at", type=float, default=0.0, metavar="SECONDS",
                   help="a file: the first frame at or after this time (default 0)")
    p.add_argument("--count", type=int, default=1, help="frames to save (default 1)")
    p.add_argument("--every", type=float, default=1.0, metavar="SECONDS",
                   help="with --count: seconds of video between frames (default 1)")


def main(args: argparse.Namespace) -> int:
    from engines.train.sitelabels import LabelsError
    from pipeline.adapt import AdaptError, camera_labels_path, snapshot
    from pipeline.config import load_config

    if args.count < 1 or args.every <= 0 or args.at < 0:
        print("crowdstream snapshot: --count must be >= 1, --every > 0 and --at >= 0",
              file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    labels = Path(args.labels) if args.labels else None
    try:
        saved = snapshot(cfg, args.camera, labels, at_s=args.at, count=args.count,
                         every_s=args.every)
    except (AdaptError, LabelsError) as e:
        print(f"crowdstream snapshot: {e}", file=sys.stderr)
        return 2
    print(f"{len(saved)} frame(s) added to {camera_labels_path(cfg, args.camera, labels)}")
    return 0
