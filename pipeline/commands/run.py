"""``crowdstream run CONFIG``: count on every configured camera until the sources end or Ctrl-C.

Example::

    crowdstream run configs/demo.yaml
    crowdstream run configs/demo.yaml --live                  # the clip as a live camera, looped
    crowdstream run my.yaml --jsonl - --metrics-port none     # counts as JSON lines on stdout
    crowdstream run my.yaml --metrics-port 0                  # a second run: any free port
    crowdstream run site.yaml --shard 1/3                     # worker 1 of 3: its cameras only
    crowdstream run site.yaml --shard auto/3                  # index from $CROWDSTREAM_SHARD or
                                                              # the StatefulSet hostname (name-1)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run configuration (YAML), e.g. configs/demo.yaml")
    p.add_argument("--random-init", metavar="NAME", default=None,
                   help="use a small randomly initialised model (ebc-tiny-rn, ebc-tiny-vit, "
                        "count-tiny) instead of model.checkpoint; counts are not meaningful")
    p.add_argument("--jsonl", metavar="PATH", default=None,
                   help="write one JSON line per counted frame to PATH ('-' = stdout)")
    p.add_argument("--metrics-port", metavar="PORT", default=None,
                   help="port of /metrics, /healthz and /readyz (overrides metrics.port; 0: any "
                        "free port, printed at start; 'none' disables it)")
    p.add_argument("--quiet", action="store_true", help="no console status line")
    p.add_argument("--live", action="store_true",
                   help="play file cameras like live ones: looped, at their native pace (sets "
                        "loop and realtime on them; for demos with 'crowdstream serve')")
    p.add_argument("--shard", metavar="I/N", default=None,
                   help="run only the cameras rendezvous hashing gives to shard I of N (0-based; "
                        "'auto/N': I from $CROWDSTREAM_SHARD or a StatefulSet hostname ending "
                        "in -I); implies --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue each camera after the last frame index already published to "
                        "Redis (runtime.resume)")


def main(args: argparse.Namespace) -> int:
    from engines.yamlconfig import ConfigError
    from pipeline.config import load_config
    from pipeline.shard import ShardError, parse_shard
    from pipeline.shm import ShmSpaceError
    from pipeline.supervisor import PipelineError, Supervisor

    overrides: dict = {}
    shard = None
    if args.shard is not None:
        try:
            shard = parse_shard(args.shard)
        except ShardError as e:
            raise ConfigError(None, "--shard", str(e)) from None
    if shard is not None or args.resume:
        # a sharded worker always resumes: its cameras may come from a worker that ran them
        overrides["runtime"] = {"resume": True}
    if args.random_init:
        overrides["model"] = {"random_init": args.random_init, "checkpoint": None,
                              "engine": None, "name": None}
    if args.jsonl:
        overrides["jsonl"] = args.jsonl
    if args.metrics_port is not None:
        port = None if args.metrics_port.lower() == "none" else args.metrics_port
        if port is not None and not port.isdigit():
            raise ConfigError(None, "--metrics-port", f"expected a port number or 'none', "
                                                      f"got {args.metrics_port!r}")
        overrides["metrics"] = {"port": None if port is None else int(port)}
    cfg = load_config(args.config, overrides or None)
    if args.live:
        overrides["cameras"] = live_overrides(cfg)
        cfg = load_config(args.config, overrides)
    from pipeline.stages.inference import plan_models

    # every camera's model file (its own, or the global one) before anything starts: a missing
    # one is a one-line config error (the supervisor plans them again)
    plan_models(cfg, [n for n, c in cfg.cameras.items() if c.enabled])
    from pipeline.secrets import register_config_secrets

    register_config_secrets(cfg)  # before anything is logged
    import faulthandler
    import signal

    # `kill -USR1 <pid>` prints every thread's stack: what a stuck run is waiting on
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return Supervisor(cfg, log_level=args.log_level, console=not args.quiet,
                          overrides=overrides or None, shard=shard).run()
    except (PipelineError, ShmSpaceError) as e:
        print(f"crowdstream: {e}", file=sys.stderr)
        return 1


def live_overrides(cfg: Any) -> dict[str, Any]:
    """``cameras:`` overrides making every file camera loop at its native pace (``--live``)."""
    return {name: {"url": cam.url, "loop": True, "realtime": True}
            for name, cam in cfg.cameras.items() if not cam.is_live}
