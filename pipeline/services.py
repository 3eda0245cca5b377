"""Services of a run: servers the supervisor starts before the stages, watches, restarts and stops
last. Today one: the embedded Redis-compatible server used when no ``redis.url`` is configured.

The embedded Redis requires a password, generated for every run into ``<data_dir>/password``
(mode 0600) and kept across its restarts; the URL it returns carries it.

A service looks like a child process to the supervisor's watch loop (``is_alive``, ``exitcode``,
``pid``) and is restarted with the same ``RestartPolicy``; ``start`` is also its restart.

Example::

    redis = RedisService(Path(cfg.run_dir) / "redis")
    url = redis.start()          # the stages get this URL (StageArgs.redis_url)
    ...
    if not redis.is_alive(): redis.start()     # same port, same data (append-only file)
    redis.stop()
"""

from __future__ import annotations

from pathlib import Path

from engines.log import get_logger
from engines.redact import redact_url
from pipeline.process import Lifeline
from pipeline.redis_embedded import (
    EmbeddedRedis,
    find_running,
    new_password,
    password_path,
    previous_port,
)


class ServiceError(RuntimeError):
    """A service could not start; the message says why and what to do."""


class RedisService:
    """The run's embedded valkey-server, supervised.

    The server runs in its own session (a terminal's Ctrl-C must not kill it before the post stage
    has flushed into it), so a ``Lifeline`` ends it if the supervisor dies without stopping it
    (SIGKILL). A restart takes the same port and data directory: publishers reconnect to the same
    URL and the append-only file brings the streams back.
    """

    name = "redis"

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.log = get_logger("redis.service")
        self._server: EmbeddedRedis | None = None
        self._lifeline: Lifeline | None = None
        self.url: str | None = None
        self.password: str | None = None  # generated per run, kept across restarts

    @property
    def password_file(self) -> Path:
        return password_path(self.data_dir)

    def start(self) -> str:
        """Start the server (or start it again after it died); returns its URL (with the run's
        password)."""
        self._release()
        if self._server is None:
            running = find_running(self.data_dir)
            if running is not None:
                raise ServiceError(
                    f"an embedded Redis for {self.data_dir} is already running at "
                    f"{redact_url(running)}: another 'crowdstream run' or 'crowdstream redis' "
                    f"uses this run_dir; stop it or set another run_dir")
            self.password = new_password(self.data_dir)  # a new run, a new password
            server = EmbeddedRedis(self.data_dir, self.port or previous_port(self.data_dir),
                                   password=self.password)
            try:
                url = server.start()
            except OSError:  # the previous (or configured) port is taken by something else
                server = EmbeddedRedis(self.data_dir, password=self.password)
                url = server.start()
        else:
            server = EmbeddedRedis(self.data_dir, port=self._server.port, password=self.password)
            try:
                url = server.start()
            except OSError as e:  # our port was taken while the server was down
                server = EmbeddedRedis(self.data_dir, password=self.password)
                url = server.start()
                self.log.error("restarted on another port: publishers still use the old URL",
                               old=redact_url(self.url or ""), url=redact_url(url), error=str(e))
        assert server.pid is not None
        self._server = server
        self._lifeline = Lifeline(server.pid, "cs-redis-watch")
        self.url = url
        return url

    def is_alive(self) -> bool:
        return self._server is not None and self._server.alive

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    @property
    def exitcode(self) -> int | None:
        return self._server.exitcode if self._server is not None else None

    def _release(self) -> None:
        if self._lifeline is not None:
            self._lifeline.release()
            self._lifeline = None

    def stop(self) -> None:
        """Stop gracefully (the append-only file is flushed); the data stays in ``data_dir``."""
        self._release()
        if self._server is not None:
            self._server.stop()


__all__ = ["RedisService", "ServiceError"]
