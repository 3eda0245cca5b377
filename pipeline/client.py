"""A small client for services that consume crowdstream's Redis output (and the one Redis reader
of this project: ``crowdstream watch`` reads through it).

It reads the documented schema (``pipeline/schema/*.json``): latest state per camera, the counts /
status / alerts streams (history, or live and blocking), and heatmaps decoded back to densities.
Imports only ``redis`` and ``numpy`` (``cv2`` lazily, for PNG heatmaps). A lost server surfaces
as ``ServerGone`` with a one-line message, never as a Redis traceback.

Example::

    from pipeline.client import CrowdClient
    c = CrowdClient.from_config("configs/demo.yaml")   # the run's redis.url or embedded server
    # (after the run: crowdstream redis --run-dir runs/demo, then CrowdClient.from_run_dir)
    print(c.cameras(), c.latest("mall")["count"])
    for entry_id, msg in c.follow("mall", with_status=True):   # blocks; count.v1 / status.v1
        print(msg["schema"], msg.get("count"))
        hm = c.heatmap(msg["heatmap"]["key"]) if msg.get("heatmap") else None
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.heatmaps import Heatmap, decode_heatmap
from pipeline.redis_keys import RedisKeys

if TYPE_CHECKING:
    from pipeline.config import AppConfig

__all__ = ["TERMINAL_STATES", "CrowdClient", "Heatmap", "ServerGone", "decode_heatmap",
           "entry_order", "run_redis_url", "url_from_config", "url_from_run_dir"]

# camera states after which a camera publishes nothing more in this run
TERMINAL_STATES = ("offline", "finished")

Entry = tuple[str, dict[str, Any]]


class ServerGone(ConnectionError):
    """The Redis server cannot be reached (any more); the message is one line for the user."""


def run_redis_url(cfg: AppConfig) -> str | None:
    """The Redis URL a run publishes to: its ``redis.url``, else the URL of the run's embedded
    server if one is running (under ``<run_dir>/redis``; the URL carries the password from
    ``<run_dir>/redis/password``), else None."""
    if cfg.redis.url:
        return cfg.redis.url
    from pipeline.redis_embedded import embedded_data_dir, find_running

    return find_running(embedded_data_dir(cfg))


def url_from_run_dir(run_dir: str | Path) -> str:
    """The URL (with its password) of the embedded server running on a run directory's data;
    RuntimeError (one line) when there is none."""
    from pipeline.redis_embedded import find_running

    url = find_running(Path(run_dir) / "redis")
    if url is None:
        raise RuntimeError(f"no embedded Redis running on {Path(run_dir) / 'redis'} (start one "
                           f"on the run's data with 'crowdstream redis --run-dir {run_dir}')")
    return url


def url_from_config(config_path: str | Path) -> str:
    """``run_redis_url`` of a config file; RuntimeError (one line) when there is none."""
    from pipeline.config import load_config
    from pipeline.redis_embedded import embedded_data_dir

    cfg = load_config(config_path)
    url = run_redis_url(cfg)
    if url is None:
        raise RuntimeError(f"{config_path}: no redis.url and no embedded server running under "
                           f"{embedded_data_dir(cfg)} (is 'crowdstream run' running?)")
    return url


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry ID ("<ms>-<seq>") as a sortable tuple."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class CrowdClient:
    """Read crowdstream's published data from Redis / Valkey."""

    def __init__(self, url: str = "redis://127.0.0.1:6379", namespace: str = "crowdstream",
                 cluster: bool = False, **redis_kwargs: Any) -> None:
        import redis

        # cluster: every per-camera key shares one slot ({camera} hash tag), so each call here
        # touches one node; follow(with_status=True) too (with_alerts does not: other slot)
        cls = redis.RedisCluster if cluster else redis.Redis
        self.url = url
        self.cluster = cluster
        self.redis = cls.from_url(url, **redis_kwargs)
        self.keys = RedisKeys(namespace)

    @classmethod
    def from_config(cls, config_path: str | Path, namespace: str | None = None,
                    **redis_kwargs: Any) -> CrowdClient:
        """A client for the run a config describes: its URL (``url_from_config``), namespace
        (unless ``namespace`` is given) and cluster setting."""
        from pipeline.config import load_config

        cfg = load_config(config_path)
        return cls(url_from_config(config_path), namespace=namespace or cfg.redis.namespace,
                   cluster=cfg.redis.cluster, **redis_kwargs)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, namespace: str = "crowdstream",
                     **redis_kwargs: Any) -> CrowdClient:
        """A client for the embedded server running on ``run_dir``'s data (a run, or
        ``crowdstream redis --run-dir`` after it ended): ``url_from_run_dir``."""
        return cls(url_from_run_dir(run_dir), namespace=namespace, **redis_kwargs)

    def close(self) -> None:
        self.redis.close()

    def _gone(self, e: Exception) -> ServerGone:
        from engines.video import redact_url

        return ServerGone(f"lost the connection to Redis at {redact_url(self.url)} "
                          f"({type(e).__name__}: {e})")

    def ping(self) -> None:
        """Raise ``ServerGone`` (one line) when the server does not answer."""
        import redis

        from engines.video import redact_url

        try:
            self.redis.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise ServerGone(f"cannot reach Redis at {redact_url(self.url)}: {e}") from e

    def cameras(self) -> list[str]:
        """Camera ids that have published."""
        return sorted(m.decode() for m in self.redis.smembers(self.keys.cameras()))

    def latest(self, camera: str) -> dict[str, Any] | None:
        """The latest count envelope plus status fields (``status``, ``status_reason``,
        ``status_ts``, ``heatmap_key``, ``stream_id``, ``publish_dropped_total``)."""
        raw = self.redis.hgetall(self.keys.latest(camera))
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        out: dict[str, Any] = json.loads(h["envelope"]) if "envelope" in h else {"camera": camera}
        for k in ("status", "status_reason", "heatmap_key", "stream_id"):
            if k in h:
                out[k] = h[k]
        if "status_ts" in h:
            out["status_ts"] = float(h["status_ts"])
        if "publish_dropped_total" in h:
            out["publish_dropped_total"] = int(h["publish_dropped_total"])
        return out

    def _decode_entries(self, entries: list[Any]) -> list[Entry]:
        return [(eid.decode(), json.loads(fields[b"data"])) for eid, fields in entries]

    def counts(self, camera: str, start: str = "-", end: str = "+",
               count: int | None = None) -> list[Entry]:
        """Count envelopes from the camera's stream, oldest first."""
        return self._decode_entries(self.redis.xrange(self.keys.counts(camera), start, end, count))

    def last_counts(self, camera: str, n: int = 10) -> list[Entry]:
        """The newest ``n`` count envelopes, oldest first."""
        return self.counts_rev(camera, n)[::-1]

    def counts_rev(self, camera: str, n: int) -> list[Entry]:
        return self._decode_entries(self.redis.xrevrange(self.keys.counts(camera), count=n))

    def status(self, camera: str, count: int | None = None) -> list[Entry]:
        """Status changes (``crowdstream.status.v1``), oldest first."""
        return self._decode_entries(self.redis.xrange(self.keys.status(camera), count=count))

    def last_status_id(self, camera: str) -> str:
        """ID of the camera's newest status entry ("0-0" when it has none)."""
        last = self.redis.xrevrange(self.keys.status(camera), count=1)
        return last[0][0].decode() if last else "0-0"

    def alerts(self, start: str = "-", count: int | None = None) -> list[Entry]:
        """Alert events (``crowdstream.alert.v1``) of all cameras, oldest first."""
        return self._decode_entries(self.redis.xrange(self.keys.alerts(), start, "+", count))

    def follow_batches(self, camera: str, last_id: str = "$", block_ms: int = 1000,
                       with_status: bool = False,
                       with_alerts: bool = False) -> Iterator[list[Entry]]:
        """Yield what arrives per blocking read: count envelopes, plus the camera's status changes
        (``with_status``) and its alert events (``with_alerts``), merged in ID order. An empty
        list means ``block_ms`` passed with nothing new (a chance to refresh a display).

        ``last_id="$"``: only new entries; ``"0"``: from the oldest entry kept. Raises
        ``ServerGone`` when the server goes away.
        """
        import redis

        if with_alerts and self.cluster:
            raise ValueError("follow(with_alerts=True) reads two hash slots: not on a cluster")
        ids = {self.keys.counts(camera): last_id}
        if with_status:
            ids[self.keys.status(camera)] = last_id
        if with_alerts:
            ids[self.keys.alerts()] = last_id
        while True:
            try:
                reply = self.redis.xread(ids, block=block_ms, count=500)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                raise self._gone(e) from e
            batch: list[Entry] = []
            for stream, entries in reply or []:
                key = stream.decode() if isinstance(stream, bytes) else stream
                decoded = self._decode_entries(entries)
                if decoded:
                    ids[key] = decoded[-1][0]
                batch += [(eid, m) for eid, m in decoded if m.get("camera") == camera]
            batch.sort(key=lambda e: entry_order(e[0]))
            yield batch

    def follow(self, camera: str, last_id: str = "$", block_ms: int = 1000,
               with_status: bool = False, with_alerts: bool = False) -> Iterator[Entry]:
        """Yield new messages one by one as they arrive (see ``follow_batches``)."""
        for batch in self.follow_batches(camera, last_id, block_ms, with_status, with_alerts):
            yield from batch

    def heatmap(self, key_or_camera: str) -> Heatmap | None:
        """A heatmap by key (from an envelope), or the camera's latest; None when expired."""
        key = key_or_camera
        if ":heatmap:" not in key:
            raw = self.redis.hget(self.keys.latest(key_or_camera), "heatmap_key")
            if raw is None:
                return None
            key = raw.decode()
        fields = self.redis.hgetall(key)
        return decode_heatmap(fields) if fields else None
