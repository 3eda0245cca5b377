"""``crowdstream redis --run-dir DIR``: serve a run's embedded Redis data again, after the run.

The embedded server stops with its run, but its data (an append-only file under
``<run_dir>/redis``) stays. This command starts the same server on that data, on the port the run
used when it is free, with the run's password (``<run_dir>/redis/password``), prints how to
connect, and serves until Ctrl-C / SIGTERM. It ends with this command, however this command ends
(a watchdog holds a pipe to it, as during a run).

Example::

    crowdstream redis --run-dir runs/demo
    crowdstream watch mall --run-dir runs/demo --from-start      # in a second terminal
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="the run directory (its redis/ folder holds the data)")
    src.add_argument("--config", help="a run config: serve the data of its run_dir")
    p.add_argument("--port", type=int, default=None,
                   help="port to listen on (default: the one the run used, else the first free "
                        ">= 16379)")


def has_data(data_dir: Path) -> bool:
    """True when ``data_dir`` holds an embedded server's append-only data."""
    return (data_dir / "appendonlydir").is_dir() or (data_dir / "appendonly.aof").is_file()


def main(args: argparse.Namespace) -> int:
    from engines.redact import redact_url
    from pipeline.redis_embedded import connect_hint, find_running, password_path

    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        from pipeline.config import load_config

        run_dir = Path(load_config(args.config).run_dir)
    data = run_dir / "redis"
    if not has_data(data):
        print(f"crowdstream redis: no embedded Redis data under {data} (a run with redis.url set "
              f"publishes elsewhere; is {run_dir} a run directory?)", file=sys.stderr)
        return 1
    running = find_running(data)
    if running is not None:
        print(f"crowdstream redis: already serving {data} at {redact_url(running)}; connect "
              f"with: {connect_hint(running, password_path(data))}", file=sys.stderr)
        return 0
    # handlers first: a SIGTERM while the server starts must still stop it (not orphan it)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(run_dir, data, args.port, stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _serve(run_dir: Path, data: Path, port: int | None, stop: threading.Event) -> int:
    """Start the server on ``data``, print how to connect, serve until ``stop``."""
    from engines.redact import redact_url
    from pipeline.process import Lifeline
    from pipeline.redis_embedded import EmbeddedRedis, connect_hint, password_path, previous_port

    server = EmbeddedRedis(data, port=port or previous_port(data))
    try:
        try:
            url = server.start()
        except OSError as e:
            if port:
                print(f"crowdstream redis: --port {port}: {e}", file=sys.stderr)
                return 1
            server = EmbeddedRedis(data)  # the run's port is taken now: any free one
            url = server.start()
    except RuntimeError as e:  # the server's own reason, from its log
        print(f"crowdstream redis: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    lifeline = Lifeline(server.pid or 0, "cs-redis-watch")
    try:
        print(f"crowdstream redis: serving the data of {run_dir} at {redact_url(url)} (password "
              f"in {password_path(data)}); Ctrl-C to stop\n"
              f"  redis-cli: {connect_hint(url, password_path(data))}\n"
              f"  watch:     crowdstream watch CAMERA --run-dir {run_dir} --from-start\n"
              f"  Python:    CrowdClient.from_run_dir({str(run_dir)!r})", flush=True)
        while not stop.wait(0.5):
            if not server.alive:
                print(f"crowdstream redis: the server exited (code {server.exitcode}); see "
                      f"{data / 'valkey.log'}", file=sys.stderr)
                return 1
        return 0
    finally:
        lifeline.release()
        server.stop()
