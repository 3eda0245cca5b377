"""``crowdstream`` command line: one entry point, one module per subcommand.

Each subcommand module provides ``configure(parser)`` and ``main(args) -> int``. Command modules
import nothing heavy at module level (torch, cv2, av go inside ``main``), so building the parser
stays fast and ``crowdstream watch`` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from engines.yamlconfig import ConfigError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipeline.commands.run", "count people on the configured cameras until stopped"),
    "config": ("pipeline.commands.config", "validate a config file or print its JSON Schema"),
    "watch": ("pipeline.commands.watch", "follow a camera's counts live from Redis"),
    "serve": ("pipeline.commands.serve", "the operator console and HTTP API (reads Redis)"),
    "redis": ("pipeline.commands.redis", "serve a run's embedded Redis data again after the run"),
    "train": ("pipeline.commands.train", "train a CLIP-EBC model on a point-annotated dataset"),
    "eval": ("pipeline.commands.eval", "evaluate a checkpoint or engine on a dataset or video"),
    "export": ("pipeline.commands.export", "build an engine (ONNX / TensorRT) from a checkpoint"),
    "calibrate": ("pipeline.commands.calibrate", "INT8 engine calibration or camera ground-plane calibration"),
    "bench": ("pipeline.commands.bench", "measure engine throughput per backend and precision"),
    "models": ("pipeline.commands.models", "released models: list, info, pull, convert; model cards"),
    "adapt": ("pipeline.commands.adapt", "fine-tune a model for one camera from labeled frames and footage"),
    "snapshot": ("pipeline.commands.snapshot", "save frames of a camera for labeling"),
    "labels": ("pipeline.commands.labels", "import labels from Label Studio, CVAT or COCO exports"),
}


def add_subcommands(sub: Any, table: dict[str, tuple[str, str]], key: str) -> None:
    """Add one sub-parser per ``table`` entry, configured by its module's ``configure``.

    The chosen module's name lands in ``args.<key>_module``; a module that is not in this build
    leaves a message in ``args.<key>_missing`` instead of failing the whole parser.
    """
    for name, (module, help_text) in table.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(**{f"{key}_module": module})
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                p.set_defaults(**{f"{key}_missing":
                                  f"'{name}' is not available in this build ({module} missing)"})
                continue
            raise
        mod.configure(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crowdstream", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_subcommands(sub, COMMANDS, "_cmd")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from engines.log import setup_logging

    setup_logging(args.log_level)
    if getattr(args, "_cmd_missing", None):
        print(f"crowdstream: {args._cmd_missing}", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._cmd_module)
    try:
        return int(mod.main(args) or 0)
    except ConfigError as e:
        print(f"crowdstream: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
