"""``crowdstream watch CAMERA``: follow a camera's counts, status and alerts live from Redis.

Reads the published streams (``crowdstream.count.v1`` etc.) through ``pipeline.client.CrowdClient``,
so it works against any run that publishes to the same Redis, from any machine; a ``--url`` of a
Redis Cluster node is recognised as such and followed through a failover. Imports only the
Redis client and numpy: no torch. Ends by itself, with one line saying why, when the camera is
``offline`` or ``finished`` (exit 0) or when the server goes away (exit 1).

Example::

    crowdstream watch mall --config configs/demo.yaml          # a running embedded server
    crowdstream watch mall --run-dir runs/demo --from-start    # after 'crowdstream redis'
    crowdstream watch lobby --url redis://10.0.0.5:6379 --json  # JSON lines, every message
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from pipeline.schema import COUNT_SCHEMA, STATUS_SCHEMA

if TYPE_CHECKING:
    from pipeline.client import CrowdClient

DEFAULT_URL = "redis://127.0.0.1:6379"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("camera", help="camera id as in the config")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", help=f"Redis URL (default: $CROWDSTREAM_REDIS_URL or {DEFAULT_URL})")
    src.add_argument("--config", help="run config: use its redis.url or its running embedded server")
    src.add_argument("--run-dir", help="a run directory whose embedded server is running (during "
                                       "the run, or 'crowdstream redis --run-dir' after it)")
    p.add_argument("--namespace", default=None, help="key namespace (default: the config's, "
                   "else 'crowdstream')")
    p.add_argument("--json", action="store_true", help="print every message as a JSON line")
    p.add_argument("--from-start", action="store_true", help="replay the streams from the oldest "
                   "entry kept (default: only new messages)")
    p.add_argument("--interval", type=float, default=0.5,
                   help="human output: at most one count line per this many seconds")
    p.add_argument("--count", type=int, default=None,
                   help="exit after this many count messages (default: run until Ctrl-C)")


def _client(args: argparse.Namespace) -> CrowdClient:
    """The client for ``--config`` (its URL and namespace) or ``--url`` / the environment."""
    from pipeline.client import CrowdClient

    opts: dict[str, Any] = {"socket_connect_timeout": 3}
    if args.config:
        return CrowdClient.from_config(args.config, namespace=args.namespace, **opts)
    if args.run_dir:
        return CrowdClient.from_run_dir(args.run_dir, namespace=args.namespace or "crowdstream",
                                        **opts)
    url = args.url or os.environ.get("CROWDSTREAM_REDIS_URL") or DEFAULT_URL
    return CrowdClient(url, namespace=args.namespace or "crowdstream", **opts)


def format_count(m: dict[str, Any]) -> str:
    """One human line for a ``crowdstream.count.v1`` message."""
    t = time.strftime("%H:%M:%S", time.localtime(m["capture_ts"]))
    parts = [f"{t}  frame {m['frame_index']:>7}  count {m['count']:7.1f} (raw {m['raw_count']:.1f})"]
    if m.get("density_m2") is not None:
        parts.append(f"{m['density_m2']:.2f}/m2")
    if m.get("zones"):
        zs = []
        for name, z in m["zones"].items():
            extra = f" {z['density_m2']:.2f}/m2" if z.get("density_m2") is not None else ""
            zs.append(f"{name}={z['count']:.1f}{extra}")
        parts.append("zones " + " ".join(zs))
    lat = m["publish_ts"] - m["capture_ts"]
    parts.append(f"latency {lat * 1000:.0f} ms")
    return "  ".join(parts)


def format_other(m: dict[str, Any]) -> str:
    if m["schema"] == STATUS_SCHEMA:
        return f"-- status {m['state']}: {m['reason']}"
    where = f" zone {m['zone']}" if m.get("zone") else ""
    return (f"!! ALERT {m['event']} {m['severity']} {m['rule']}{where}: {m['metric']} "
            f"{m['before']} -> {m['after']:.2f} (threshold {m['threshold']}, clear {m['clear']})")


class _Printer:
    """Prints messages: every one as JSON, or human lines with counts at most every interval."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.json
        self.interval = args.interval
        self.limit = args.count
        self.seen = 0
        self.pending: dict[str, Any] | None = None
        self.last_print = 0.0

    @property
    def done(self) -> bool:
        return self.limit is not None and self.seen >= self.limit

    def message(self, m: dict[str, Any]) -> None:
        is_count = m["schema"] == COUNT_SCHEMA
        if self.json:
            print(json.dumps(m), flush=True)
        elif is_count:
            self.pending = m
        else:
            print(format_other(m), flush=True)
        if is_count:
            self.seen += 1

    def tick(self, force: bool = False) -> None:
        """Print the newest count if the interval passed (or ``force``)."""
        now = time.monotonic()
        if self.pending is not None and (force or self.done or
                                         now - self.last_print >= self.interval):
            print(format_count(self.pending), flush=True)
            self.pending, self.last_print = None, now


def _follow(client: CrowdClient, args: argparse.Namespace, out: _Printer) -> str | None:
    """Print until the count limit, or until the camera ends; returns why it ended (or None).

    A terminal status ends the watch when it is the camera's newest (replayed with
    ``--from-start``) or arrives live: older runs' ends in the history do not.
    """
    from pipeline.client import TERMINAL_STATES, entry_order

    backlog_end = entry_order(client.last_status_id(args.camera))
    start = "0" if args.from_start else "$"
    for batch in client.follow_batches(args.camera, start, block_ms=500, with_status=True,
                                       with_alerts=True):
        ended = None
        for eid, m in batch:
            out.message(m)
            if out.done:
                return None
            if m["schema"] == STATUS_SCHEMA and m["state"] in TERMINAL_STATES and \
                    entry_order(eid) >= backlog_end:
                # the rest of this read still prints: entries of two streams written in the
                # same millisecond may sort the end before the last counts
                ended = f"camera {args.camera!r} is {m['state']} ({m['reason']})"
        out.tick()
        if ended:
            return ended
    return None


def main(args: argparse.Namespace) -> int:
    from pipeline.client import ServerGone

    try:
        client = _client(args)
        client.ping()
    except (RuntimeError, ServerGone) as e:
        print(f"crowdstream watch: {e}", file=sys.stderr)
        return 1
    if not args.json:
        latest = client.latest(args.camera) or {}
        print(f"watching {args.camera!r} on {_shown(client.url)} (namespace "
              f"{client.keys.namespace}); status: {latest.get('status', 'unknown')}; "
              "Ctrl-C to stop", flush=True)
    out = _Printer(args)
    try:
        ended = _follow(client, args, out)
    except ServerGone as e:
        out.tick(force=True)
        print(f"crowdstream watch: {e}; the run may have ended", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    out.tick(force=True)
    if ended:
        print(f"crowdstream watch: {ended}: nothing more to follow", file=sys.stderr)
    return 0


def _shown(url: str) -> str:
    from engines.video import redact_url

    return redact_url(url)
