"""``crowdstream calibrate int8 CONFIG`` and ``crowdstream calibrate ground CAMERA``.

Each kind lives in its own module (``pipeline.commands.calibrate_int8``, ``pipeline.commands.calibrate_ground``) with the usual
``configure(parser)`` / ``main(args)`` pair; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib

KINDS = {
    "int8": ("pipeline.commands.calibrate_int8", "calibrate an INT8 engine on frames from the configured cameras"),
    "ground": ("pipeline.commands.calibrate_ground", "fit a camera's ground plane for density in people per m²"),
}


def configure(p: argparse.ArgumentParser) -> None:
    from pipeline.cli import add_subcommands

    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    add_subcommands(sub, KINDS, "_calibrate")


def main(args: argparse.Namespace) -> int:
    missing = getattr(args, "_calibrate_missing", None)
    if missing:
        print(f"crowdstream calibrate: {missing}")
        return 2
    return int(importlib.import_module(args._calibrate_module).main(args) or 0)
