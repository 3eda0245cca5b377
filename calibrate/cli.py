"""``crowdstream calibrate int8 CONFIG`` and ``crowdstream calibrate ground CAMERA``.

Each kind lives in its own module (``calibrate.int8_cli``, ``calibrate.ground_cli``) with the usual
``configure(parser)`` / ``main(args)`` pair; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib

KINDS = {
    "int8": ("calibrate.int8_cli", "calibrate an INT8 engine on frames from the configured cameras"),
    "ground": ("calibrate.ground_cli", "fit a camera's ground plane for density in people per m²"),
}


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, (module, help_text) in KINDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_calibrate_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                sp.set_defaults(_calibrate_missing=True)
                continue
            raise
        mod.configure(sp)


def main(args: argparse.Namespace) -> int:
    if getattr(args, "_calibrate_missing", False):
        print(f"crowdstream calibrate: '{args.kind}' is not available in this build")
        return 2
    return int(importlib.import_module(args._calibrate_module).main(args) or 0)
