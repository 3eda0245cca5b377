"""``crowdstream labels import CAMERA EXPORT --config SITE.yaml``: labels from labeling tools.

Reads a Label Studio JSON export (keypoints, or a Number as a frame's count), a CVAT for images
1.1 XML (points) or a COCO keypoints JSON (the format is detected from the file; ``--format`` to
insist) and writes the head points into the camera's labels file
(``<run_dir>/labels/<camera>/labels.json``, or ``--labels``), replacing earlier labels of the same
images. The images are looked up beside the labels file (where ``crowdstream snapshot`` saved
them), in ``--images DIR`` and beside the export, and copied beside the labels file when found
elsewhere. See ``engines.train.labelimport``.

Example::

    crowdstream labels import lobby project-3-at-2025.json --config site.yaml
    crowdstream labels import lobby annotations.xml --labels runs/site/labels/lobby/labels.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = sub.add_parser("import", help="import a Label Studio, CVAT or COCO export")
    imp.add_argument("camera", help="the camera the frames come from")
    imp.add_argument("export", help="the export file (JSON or XML)")
    imp.add_argument("--config", default=None, help="the run configuration (finds run_dir)")
    imp.add_argument("--labels", default=None, metavar="FILE",
                     help="labels file (default: <run_dir>/labels/<camera>/labels.json)")
    imp.add_argument("--images", default=None, metavar="DIR",
                     help="where the exported images are, when not beside the labels file")
    imp.add_argument("--format", default=None, choices=["labelstudio", "cvat", "coco"],
                     help="the export's format (default: detected)")
    imp.add_argument("--label", default=None,
                     help="only shapes with this label (default: every point)")


def main(args: argparse.Namespace) -> int:
    from engines.train.labelimport import import_export
    from engines.train.sitelabels import LabelsError

    if args.labels:
        labels = Path(args.labels)
    elif args.config:
        from pipeline.adapt import camera_labels_path, camera_of
        from pipeline.config import load_config

        cfg = load_config(args.config)
        camera_of(cfg, args.camera)
        labels = camera_labels_path(cfg, args.camera)
    else:
        print("crowdstream labels import: give --config SITE.yaml (or --labels FILE)",
              file=sys.stderr)
        return 2
    try:
        report = import_export(args.export, labels, args.camera, images_dir=args.images,
                               fmt=args.format, label=args.label)
    except LabelsError as e:
        print(f"crowdstream labels import: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
