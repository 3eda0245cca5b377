"""Where the console's data comes from: a ``CrowdClient`` (the one Redis reader) and, when the
console was started with ``--config``, the run config file (zones, calibration, labels' folder).

With ``--config`` the Redis URL is re-resolved while the server cannot be reached, so the console
may be started before the run (the embedded server's port is only known once it runs) and
follows the run's server across restarts.

Example::

    src = DataSource.from_config("configs/demo.yaml")
    client = src.client()          # ServerGone (one line) when there is no server yet
    cfg = src.config()             # re-read when the file changed; None with --redis
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.video import redact_url
from pipeline.client import CrowdClient, ServerGone

if TYPE_CHECKING:
    from pipeline.config import AppConfig, ServeConfig

RETRY_S = 2.0


@dataclass
class DataSource:
    """Lazily connected Redis client plus the optional config file."""

    connect: Callable[[], CrowdClient]
    config_path: Path | None = None
    _client: CrowdClient | None = field(default=None, init=False)
    _next_try: float = field(default=0.0, init=False)
    _error: str = field(default="", init=False)
    _cfg: Any = field(default=None, init=False)
    _cfg_mtime: float = field(default=-1.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @classmethod
    def from_config(cls, path: str | Path) -> DataSource:
        """The run's Redis (``CrowdClient.from_config``) and its config file."""
        p = Path(path)
        return cls(lambda: CrowdClient.from_config(p, socket_connect_timeout=2,
                                                   socket_timeout=10), p)

    @classmethod
    def from_url(cls, url: str, namespace: str = "crowdstream",
                 cluster: bool = False) -> DataSource:
        """A Redis URL only: the console is read-only (no config file to write)."""
        return cls(lambda: CrowdClient(url, namespace=namespace, cluster=cluster,
                                       socket_connect_timeout=2, socket_timeout=10))

    # ------------------------------------------------------------------ Redis
    def client(self) -> CrowdClient:
        """The connected client; ``ServerGone`` with the reason while there is none."""
        with self._lock:
            if self._client is not None:
                return self._client
            if time.monotonic() < self._next_try:
                raise ServerGone(self._error or "Redis not reachable yet")
            try:
                c = self.connect()
                c.ping()
            except (RuntimeError, ServerGone, OSError, ValueError) as e:
                self._error = str(e)
                self._next_try = time.monotonic() + RETRY_S
                raise ServerGone(self._error) from None
            self._client, self._error = c, ""
            return c

    def lost(self, error: Exception) -> None:
        """A call failed with a connection error: drop the client, resolve the URL again."""
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001 - it is gone already
                    pass
            self._client = None
            self._error = f"lost the connection to Redis ({type(error).__name__}: {error})"
            self._next_try = time.monotonic() + 0.5

    def status(self) -> dict[str, Any]:
        """Connection state for /health (the URL redacted)."""
        c = self._client
        return {"connected": c is not None, "url": redact_url(c.url) if c else None,
                "error": self._error or None,
                "namespace": c.keys.namespace if c else None}

    # ------------------------------------------------------------------ config file
    @property
    def writable(self) -> bool:
        return self.config_path is not None

    def config(self) -> AppConfig | None:
        """The run config, re-read when the file changed (None without ``--config``)."""
        if self.config_path is None:
            return None
        from pipeline.config import load_config

        mtime = self.config_path.stat().st_mtime
        if self._cfg is None or mtime != self._cfg_mtime:
            self._cfg = load_config(self.config_path)
            self._cfg_mtime = mtime
        return self._cfg

    def serve_config(self) -> ServeConfig:
        from pipeline.config import ServeConfig

        cfg = self.config() if self.config_path else None
        return cfg.serve if cfg is not None else ServeConfig()


__all__ = ["DataSource"]
