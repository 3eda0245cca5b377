"""``crowdstream serve``: the operator console and HTTP API, reading the pipelines' Redis.

Prints the URL to open. With ``--config`` it follows that run's Redis (its ``redis.url`` or its
embedded server, found again if the run restarts) and may change the config's zones and
calibration and write labels under its run directory; with ``--redis URL`` it is read-only.
Binds 127.0.0.1 unless told otherwise; another address needs a token (``serve.token_env`` or
``--token-env``: the name of an environment variable holding it), and every write needs the
token whenever one is set.

Example::

    crowdstream serve --config configs/demo.yaml              # http://127.0.0.1:8765/
    API_TOKEN=... crowdstream serve --config site.yaml --host 0.0.0.0 --token-env API_TOKEN
    crowdstream serve --redis redis://10.0.0.5:6379 --port 0  # read-only, a free port
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="SITE.yaml",
                     help="the run config: its Redis, zones, calibration and run directory")
    src.add_argument("--redis", metavar="URL", help="a Redis URL only (read-only console)")
    p.add_argument("--namespace", default="crowdstream", help="key namespace with --redis")
    p.add_argument("--cluster", action="store_true", help="--redis is a Redis Cluster node")
    p.add_argument("--host", default=None, help="address to listen on (default: serve.host, "
                                                "127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8765; 0: "
                                                          "a free one)")
    p.add_argument("--token-env", default=None, metavar="NAME",
                   help="environment variable holding the API token (default: serve.token_env)")


def _fail(msg: str, code: int = 2) -> int:
    print(f"crowdstream serve: {msg}", file=sys.stderr)
    return code


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def main(args: argparse.Namespace) -> int:
    from pipeline.config import ServeConfig, load_config
    from pipeline.web.security import is_loopback
    from pipeline.web.source import DataSource

    serve = ServeConfig()
    if args.config:
        cfg = load_config(args.config)  # a ConfigError is the CLI's one-line error
        from pipeline.secrets import register_config_secrets

        register_config_secrets(cfg)
        serve = cfg.serve
        source = DataSource.from_config(args.config)
    else:
        source = DataSource.from_url(args.redis, args.namespace, args.cluster)
    host = args.host or serve.host
    port = serve.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        return _fail(f"--port {port}: expected 0..65535")
    token_env = args.token_env or serve.token_env
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            return _fail(f"serve.token_env: environment variable {token_env} is not set (or "
                         f"empty): set it to the token writes must carry")
    loopback = is_loopback(host)
    if not loopback and token is None:
        return _fail(f"serve.host {host!r} is not loopback: set serve.token_env (or "
                     f"--token-env NAME) to an environment variable holding a token first")
    try:
        sock = _bind(host, port)
    except OSError as e:
        return _fail(f"serve.port: cannot listen on {host}:{port}: {e.strerror or e}")
    return _run(source, sock, host, token, loopback, serve)


def _run(source: Any, sock: socket.socket, host: str, token: str | None, loopback: bool,
         serve: Any) -> int:
    import uvicorn

    from pipeline.web.app import create_app

    port = sock.getsockname()[1]
    app = create_app(source, token=token, loopback=loopback, max_body=serve.max_body_kb * 1024,
                     rate=serve.requests_per_s, max_clients=serve.max_event_clients)
    url = url_of(host, port)
    where = f"config {source.config_path}" if source.config_path else "read-only (--redis)"
    print(f"crowdstream console: open {url}  (API {url}api/v1/, OpenAPI "
          f"{url}api/v1/openapi.json; {where}"
          + ("; writes need the token: open the URL with #token=<token> once" if token else "")
          + "; Ctrl-C to stop)", flush=True)
    try:
        source.client()
    except Exception as e:  # noqa: BLE001 - the console waits for the run and says what for
        print(f"note: no data yet ({e}); the console shows the cameras once a run publishes, "
              f"e.g. 'crowdstream run {source.config_path or 'SITE.yaml'} --live'", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2, lifespan="on"))
    server.run(sockets=[sock])
    return 0
