"""A small client for services that consume crowdstream's Redis output.

It reads the documented schema (``pipeline/schema/*.json``): latest state per camera, the counts /
status / alerts streams (history or live, blocking), and heatmaps decoded back to densities.
Imports only ``redis`` and ``numpy`` (``cv2`` lazily, for PNG heatmaps).

Example::

    from pipeline.client import CrowdClient
    c = CrowdClient("redis://127.0.0.1:16379")
    print(c.cameras(), c.latest("lobby")["count"])
    for entry_id, msg in c.follow("lobby"):      # blocks, yields crowdstream.count.v1 dicts
        print(msg["frame_index"], msg["count"])
        hm = c.heatmap(msg["heatmap"]["key"]) if msg["heatmap"] else None
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.redis_keys import RedisKeys


@dataclass
class Heatmap:
    """A decoded ``crowdstream.heatmap.v1``: ``density[i, j]`` people in cell (i, j)."""

    density: np.ndarray  # float32 (height, width)
    meta: dict[str, Any]

    @property
    def count(self) -> float:
        return float(self.density.sum(dtype=np.float64))


def decode_heatmap(fields: dict[bytes | str, bytes]) -> Heatmap:
    """Decode the fields of a heatmap hash (as returned by HGETALL) into densities."""
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    if "data" not in f:
        raise ValueError("not a crowdstream heatmap hash (no 'data' field)")
    meta: dict[str, Any] = {k: v.decode() for k, v in f.items() if k != "data"}
    for k in ("frame_index", "height", "width", "frame_height", "frame_width"):
        meta[k] = int(meta[k])
    for k in ("capture_ts", "scale", "cell_pixels", "count"):
        meta[k] = float(meta[k])
    h, w = meta["height"], meta["width"]
    if meta["format"] == "float16":
        density = np.frombuffer(f["data"], dtype="<f2").reshape(h, w).astype(np.float32)
    else:
        import cv2

        grey = cv2.imdecode(np.frombuffer(f["data"], np.uint8), cv2.IMREAD_UNCHANGED)
        if grey is None or grey.shape != (h, w):
            raise ValueError(f"heatmap PNG does not decode to {h}x{w}")
        density = grey.astype(np.float32) * np.float32(meta["scale"])
    return Heatmap(density, meta)


def url_from_config(config_path: str | Path) -> str:
    """The Redis URL a run config publishes to: its ``redis.url`` or its running embedded server."""
    from pipeline.config import load_config
    from pipeline.redis_embedded import embedded_data_dir, find_running

    cfg = load_config(config_path)
    if cfg.redis.url:
        return cfg.redis.url
    url = find_running(embedded_data_dir(cfg))
    if url is None:
        raise RuntimeError(f"{config_path}: no redis.url and no embedded server running under "
                           f"{embedded_data_dir(cfg)} (is 'crowdstream run' running?)")
    return url


class CrowdClient:
    """Read crowdstream's published data from Redis / Valkey."""

    def __init__(self, url: str = "redis://127.0.0.1:6379", namespace: str = "crowdstream",
                 cluster: bool = False, **redis_kwargs: Any) -> None:
        import redis

        # cluster: every per-camera key shares one slot ({camera} hash tag), so each call here
        # touches one node; follow(with_status=False) too
        cls = redis.RedisCluster if cluster else redis.Redis
        self.redis = cls.from_url(url, **redis_kwargs)
        self.keys = RedisKeys(namespace)

    def close(self) -> None:
        self.redis.close()

    def cameras(self) -> list[str]:
        """Camera ids that have published."""
        return sorted(m.decode() for m in self.redis.smembers(self.keys.cameras()))

    def latest(self, camera: str) -> dict[str, Any] | None:
        """The latest count envelope plus status fields (``status``, ``status_reason``...)."""
        raw = self.redis.hgetall(self.keys.latest(camera))
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        out: dict[str, Any] = json.loads(h["envelope"]) if "envelope" in h else {"camera": camera}
        for k in ("status", "status_reason", "heatmap_key", "stream_id"):
            if k in h:
                out[k] = h[k]
        for k in ("status_ts", "dropped_total"):
            if k in h:
                out[k] = float(h[k])
        return out

    def _decode_entries(self, entries: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        return [(eid.decode(), json.loads(fields[b"data"])) for eid, fields in entries]

    def counts(self, camera: str, start: str = "-", end: str = "+",
               count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Count envelopes from the camera's stream, oldest first."""
        return self._decode_entries(self.redis.xrange(self.keys.counts(camera), start, end, count))

    def last_counts(self, camera: str, n: int = 10) -> list[tuple[str, dict[str, Any]]]:
        """The newest ``n`` count envelopes, oldest first."""
        return self.counts_rev(camera, n)[::-1]

    def counts_rev(self, camera: str, n: int) -> list[tuple[str, dict[str, Any]]]:
        return self._decode_entries(self.redis.xrevrange(self.keys.counts(camera), count=n))

    def status(self, camera: str, count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Status changes (``crowdstream.status.v1``), oldest first."""
        return self._decode_entries(self.redis.xrange(self.keys.status(camera), count=count))

    def alerts(self, start: str = "-", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Alert events (``crowdstream.alert.v1``) of all cameras, oldest first."""
        return self._decode_entries(self.redis.xrange(self.keys.alerts(), start, "+", count))

    def follow(self, camera: str, last_id: str = "$", block_ms: int = 1000,
               with_status: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield new count envelopes as they arrive (and status changes with ``with_status``).

        ``last_id="$"``: only new entries; ``"0"``: from the start of the stream.
        """
        ids = {self.keys.counts(camera): last_id}
        if with_status:
            ids[self.keys.status(camera)] = last_id
        while True:
            reply = self.redis.xread(ids, block=block_ms, count=500)
            for stream, entries in reply or []:
                key = stream.decode() if isinstance(stream, bytes) else stream
                decoded = self._decode_entries(entries)
                if decoded:
                    ids[key] = decoded[-1][0]
                yield from decoded

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
