"""``crowdstream config validate FILE`` / ``crowdstream config schema [OUT]``.

``validate`` loads the file exactly as ``crowdstream run`` does (every bound and rule across keys)
and lists the cameras; a bad config is one line ``FILE: key.path: reason`` on stderr, exit 2.
``schema`` prints (or writes) the editor JSON Schema generated from the config models.

Example::

    crowdstream config validate configs/demo.yaml
    crowdstream config schema configs/crowdstream.schema.json
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("validate", help="load and validate a config file")
    v.add_argument("file")
    s = sub.add_parser("schema", help="print (or write) the JSON Schema for editors")
    s.add_argument("out", nargs="?", default=None)


def main(args: argparse.Namespace) -> int:
    from pipeline.config import config_schema, load_config

    if args.action == "validate":
        cfg = load_config(args.file)
        for name, cam in cfg.cameras.items():
            own = f", own model {cam.model.source}" if cam.model is not None else ""
            print(f"{name}: {cam.url} (policy {cam.effective_policy}{own})")
        print(f"{args.file}: OK, {len(cfg.cameras)} camera(s)")
        return 0
    text = json.dumps(config_schema(), indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
