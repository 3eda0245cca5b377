"""``crowdstream watch CAMERA``: follow a camera's counts, status and alerts live from Redis.

Reads the published streams (``crowdstream.count.v1`` etc.), so it works against any run that
publishes to the same Redis, from any machine. Imports only the Redis client and numpy: no torch.

Example::

    crowdstream watch mall --config configs/demo.yaml          # a running embedded server
    crowdstream watch lobby --url redis://10.0.0.5:6379 --json  # JSON lines, every message
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

DEFAULT_URL = "redis://127.0.0.1:6379"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("camera", help="camera id as in the config")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", help=f"Redis URL (default: $CROWDSTREAM_REDIS_URL or {DEFAULT_URL})")
    src.add_argument("--config", help="run config: use its redis.url or its running embedded server")
    p.add_argument("--namespace", default=None, help="key namespace (default: the config's, "
                   "else 'crowdstream')")
    p.add_argument("--json", action="store_true", help="print every message as a JSON line")
    p.add_argument("--from-start", action="store_true", help="replay the streams from the oldest "
                   "entry kept (default: only new messages)")
    p.add_argument("--interval", type=float, default=0.5,
                   help="human output: at most one count line per this many seconds")
    p.add_argument("--count", type=int, default=None,
                   help="exit after this many count messages (default: run until Ctrl-C)")


def _resolve(args: argparse.Namespace) -> tuple[str, str]:
    namespace = args.namespace
    if args.config:
        from pipeline.client import url_from_config
        from pipeline.config import load_config

        url = url_from_config(args.config)
        namespace = namespace or load_config(args.config).redis.namespace
    else:
        url = args.url or os.environ.get("CROWDSTREAM_REDIS_URL") or DEFAULT_URL
    return url, namespace or "crowdstream"


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
    if m["schema"] == "crowdstream.status.v1":
        return f"-- status {m['state']}: {m['reason']}"
    where = f" zone {m['zone']}" if m.get("zone") else ""
    return (f"!! ALERT {m['event']} {m['severity']} {m['rule']}{where}: {m['metric']} "
            f"{m['before']} -> {m['after']:.2f} (threshold {m['threshold']}, clear {m['clear']})")


def main(args: argparse.Namespace) -> int:
    import redis

    from pipeline.redis_keys import RedisKeys

    try:
        url, namespace = _resolve(args)
    except RuntimeError as e:
        print(f"crowdstream watch: {e}", file=sys.stderr)
        return 1
    keys = RedisKeys(namespace)
    r = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        r.ping()
    except redis.RedisError as e:
        print(f"crowdstream watch: cannot reach Redis at {url}: {e}", file=sys.stderr)
        return 1
    start = "0" if args.from_start else "$"
    ids = {keys.counts(args.camera): start, keys.status(args.camera): start, keys.alerts(): start}
    if not args.json:
        latest = r.hget(keys.latest(args.camera), "status")
        print(f"watching {args.camera!r} on {url} (namespace {namespace}); "
              f"status: {latest.decode() if latest else 'unknown'}; Ctrl-C to stop", flush=True)
    seen, last_print, pending = 0, 0.0, None
    try:
        while args.count is None or seen < args.count:
            reply = r.xread(ids, block=500, count=1000) or []
            for stream, entries in reply:
                key = stream.decode()
                for eid, fields in entries:
                    ids[key] = eid.decode()
                    m = json.loads(fields[b"data"])
                    if m.get("camera") != args.camera:
                        continue  # the alerts stream holds every camera
                    is_count = m["schema"] == "crowdstream.count.v1"
                    if args.json:
                        print(json.dumps(m), flush=True)
                    elif is_count:
                        pending = m
                    else:
                        print(format_other(m), flush=True)
                    if is_count:
                        seen += 1
                        if args.count is not None and seen >= args.count:
                            break
            now = time.monotonic()
            if pending is not None and (now - last_print >= args.interval or
                                        (args.count is not None and seen >= args.count)):
                print(format_count(pending), flush=True)
                pending, last_print = None, now
    except KeyboardInterrupt:
        pass
    finally:
        r.close()
    return 0
