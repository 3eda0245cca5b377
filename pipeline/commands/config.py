"""``crowdstream config validate FILE`` / ``crowdstream config schema [OUT]``.

``validate`` loads the file exactly as ``crowdstream run`` does (every bound and rule across keys)
and lists the cameras; a bad config is one line ``FILE: key.path: reason`` on stderr, exit 2.
``schema`` prints (or writes) the editor JSON Schema generated from the config models.

``validate --shards N`` also prints which of N workers (``crowdstream run --shard I/N``) runs each
camera, and how many cameras would move if an (N+1)-th worker were added.

Example::

    crowdstream config validate configs/demo.yaml
    crowdstream config validate site.yaml --shards 4
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
    v.add_argument("--shards", type=int, metavar="N", default=None,
                   help="print the camera -> worker assignment for N workers (--shard I/N)")
    s = sub.add_parser("schema", help="print (or write) the JSON Schema for editors")
    s.add_argument("out", nargs="?", default=None)


def print_assignment(cameras: list[str], shards: int) -> None:
    """One line per worker with its cameras, then what adding a worker would move."""
    from pipeline.shard import assign, moved

    for index, cams in assign(cameras, shards).items():
        shown = ", ".join(cams) if cams else "(none: idles)"
        print(f"shard {index}/{shards}: {len(cams)} camera(s): {shown}")
    gone = moved(cameras, shards, shards + 1)
    print(f"adding worker {shards} (--shard {shards}/{shards + 1}, every worker restarted with "
          f"/{shards + 1}) moves {len(gone)} of {len(cameras)} camera(s) to it")


def main(args: argparse.Namespace) -> int:
    from engines.video import redact_url
    from engines.yamlconfig import ConfigError
    from pipeline.config import config_schema, load_config

    if args.action == "validate":
        cfg = load_config(args.file)
        if args.shards is not None and args.shards < 1:
            raise ConfigError(None, "--shards", f"must be >= 1, got {args.shards}")
        for name, cam in cfg.cameras.items():
            own = f", own model {cam.model.source}" if cam.model is not None else ""
            print(f"{name}: {redact_url(cam.url)} (policy {cam.effective_policy}{own})")
        print(f"{args.file}: OK, {len(cfg.cameras)} camera(s)")
        if args.shards is not None:
            print_assignment([n for n, c in cfg.cameras.items() if c.enabled], args.shards)
        return 0
    text = json.dumps(config_schema(), indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
