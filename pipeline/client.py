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
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.events import END_STATES
from pipeline.heatmaps import Heatmap, decode_heatmap
from pipeline.redis_keys import RedisKeys

if TYPE_CHECKING:
    from pipeline.config import AppConfig

__all__ = ["TERMINAL_STATES", "CrowdClient", "Heatmap", "Picture", "ServerGone",
           "decode_heatmap", "entry_order", "is_cluster", "run_redis_url", "url_from_config",
           "url_from_run_dir"]

# camera states after which a camera publishes nothing more in this run (one owner: the events)
TERMINAL_STATES = END_STATES

Entry = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Picture:
    """A stored ``crowdstream.snapshot.v1``: the JPEG bytes and their metadata (typed)."""

    data: bytes
    meta: dict[str, Any]

    @property
    def frame_index(self) -> int:
        return int(self.meta["frame_index"])


def _decode_picture(fields: dict[bytes, bytes]) -> Picture | None:
    if not fields or b"data" not in fields:
        return None
    meta: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items() if k != b"data"}
    for k in ("frame_index", "width", "height", "frame_width", "frame_height", "quality"):
        if k in meta:
            meta[k] = int(meta[k])
    if "capture_ts" in meta:
        meta["capture_ts"] = float(meta["capture_ts"])
    return Picture(fields[b"data"], meta)


def ts_id(ts: float) -> str:
    """The stream ID bound of a unix time (entries get IDs from their publish time in ms)."""
    return str(max(0, int(ts * 1000)))


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


def is_cluster(url: str, **redis_kwargs: Any) -> bool:
    """True when the server at ``url`` is a Redis Cluster node (``INFO cluster``); False when it
    is not or cannot be reached (the first real call then reports that)."""
    import redis

    try:
        with redis.Redis.from_url(url, **redis_kwargs) as r:
            return bool(int(r.info("cluster").get("cluster_enabled", 0)))
    except (redis.RedisError, OSError, ValueError):
        return False


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors after which a cluster may answer again (a failover, a moved slot)."""
    import redis
    from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError

    return (redis.ConnectionError, redis.TimeoutError, OSError, ClusterDownError,
            SlotNotCoveredError, TryAgainError)


class CrowdClient:
    """Read crowdstream's published data from Redis / Valkey, or from a Redis Cluster.

    ``cluster=None`` (the default) asks the server whether it is a cluster node. On a cluster
    every per-camera key shares one slot (the ``{camera}`` hash tag), so each call touches one
    node, and a follow keeps going through a failover (``failover_s``).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379", namespace: str = "crowdstream",
                 cluster: bool | None = None, failover_s: float = 30.0, *,
                 client: Any = None, **redis_kwargs: Any) -> None:
        import redis

        if cluster is None:
            cluster = is_cluster(url, **redis_kwargs)
        cls = redis.RedisCluster if cluster else redis.Redis
        self.url = url
        self.cluster = cluster
        self.failover_s = failover_s
        # ``client``: an already configured connection (the supervisor passes the one built
        # like its publisher's, with the run's credentials and TLS settings)
        self.redis = client if client is not None else cls.from_url(url, **redis_kwargs)
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
        ``status_ts``, ``heatmap_key``, ``stream_id``, ``engine_id``, ``snapshot_frame_index``,
        ``publish_dropped_total``)."""
        return self._latest_from(camera, self.redis.hgetall(self.keys.latest(camera)))

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

    def last_frame_index(self, camera: str) -> int:
        """The newest frame index in the camera's counts stream; -1 when it has none. What a
        worker taking the camera over continues after (``runtime.resume``)."""
        last = self.counts_rev(camera, 1)
        return int(last[0][1]["frame_index"]) if last else -1

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
        ``ServerGone`` when the server goes away (on a cluster: when it has not answered for
        ``failover_s``). On a cluster the alerts stream lives on another slot: it is read
        without blocking after each read of the camera's streams.
        """
        ids = {self.keys.counts(camera): last_id}
        if with_status:
            ids[self.keys.status(camera)] = last_id
        alerts = {self.keys.alerts(): last_id} if with_alerts else {}
        if alerts and not self.cluster:
            ids.update(alerts)
            alerts = {}
        if last_id == "$":  # "$" is per read: pin it now so nothing between two reads is lost
            for group in (ids, alerts):
                for key in group:
                    group[key] = self._last_id(key)
        while True:
            reply = self._xread(ids, block_ms)
            if alerts:
                reply += self._xread(alerts, None)
            batch: list[Entry] = []
            for stream, entries in reply:
                key = stream.decode() if isinstance(stream, bytes) else stream
                decoded = self._decode_entries(entries)
                if decoded:
                    (alerts if key in alerts else ids)[key] = decoded[-1][0]
                batch += [(eid, m) for eid, m in decoded if m.get("camera") == camera]
            batch.sort(key=lambda e: entry_order(e[0]))
            yield batch

    def _last_id(self, stream: str) -> str:
        last = self._retrying(lambda: self.redis.xrevrange(stream, count=1))
        return last[0][0].decode() if last else "0-0"

    def _xread(self, ids: dict[str, str], block_ms: int | None) -> list[Any]:
        return list(self._retrying(lambda: self.redis.xread(ids, block=block_ms, count=500))
                    or [])

    def _retrying(self, call: Any) -> Any:
        """``call()``; on a cluster, transient errors (a failover) are retried for up to
        ``failover_s``; any other lost server is ``ServerGone``."""
        import time

        deadline = None
        errors = _transient_errors()
        while True:
            try:
                return call()
            except errors as e:
                now = time.monotonic()
                deadline = deadline or now + (self.failover_s if self.cluster else 0.0)
                if now >= deadline:
                    raise self._gone(e) from e
                time.sleep(0.25)
                self._heal()

    def _heal(self) -> None:
        """Cluster: read the slot map again and move the default node (redis-py asks it for the
        keys of XREAD) off a node that may be dead; a failover only shows up that way."""
        if not self.cluster:
            return
        try:
            self.redis.nodes_manager.initialize()
            self.redis.replace_default_node()
        except Exception:  # noqa: BLE001 - no node answers yet: the next attempt says so
            pass

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

    # ------------------------------------------------------------------ console reads
    def latest_many(self, cameras: list[str]) -> dict[str, dict[str, Any] | None]:
        """``latest`` of several cameras (one round trip on a single server)."""
        if self.cluster:
            return {c: self.latest(c) for c in cameras}
        pipe = self.redis.pipeline(transaction=False)
        for c in cameras:
            pipe.hgetall(self.keys.latest(c))
        out: dict[str, dict[str, Any] | None] = {}
        for c, raw in zip(cameras, pipe.execute(), strict=True):
            out[c] = self._latest_from(c, raw)
        return out

    def _latest_from(self, camera: str, raw: dict[bytes, bytes]) -> dict[str, Any] | None:
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        out: dict[str, Any] = json.loads(h["envelope"]) if "envelope" in h else {"camera": camera}
        for k in ("status", "status_reason", "heatmap_key", "stream_id", "engine_id"):
            if k in h:
                out[k] = h[k]
        for k, f in (("status_ts", float), ("publish_dropped_total", int),
                     ("snapshot_frame_index", int)):
            if k in h:
                out[k] = f(h[k])
        return out

    def snapshot(self, camera: str, full: bool = False) -> Picture | None:
        """The camera's latest JPEG snapshot (``full``: the full-resolution frame stored on
        request, see ``request_full_frame``); None when none is stored (or it expired)."""
        key = self.keys.frame(camera) if full else self.keys.snapshot(camera)
        return _decode_picture(self.redis.hgetall(key))

    def request_full_frame(self, camera: str, ttl_s: int = 30) -> None:
        """Ask the pipeline for one full-resolution frame: its next snapshot also stores the
        frame at the decoded resolution (``snapshot(camera, full=True)``)."""
        self.redis.set(self.keys.frame_request(camera), str(time.time()), ex=ttl_s)

    def wait_full_frame(self, camera: str, timeout_s: float = 10.0) -> Picture | None:
        """``request_full_frame`` and wait for the full frame it brings (a full frame is only
        stored on request, so any one newer than what was there is the answer)."""
        def ident(p: Picture | None) -> tuple[Any, ...] | None:
            return None if p is None else (p.frame_index, p.meta.get("capture_ts"),
                                           p.meta.get("run_id"))

        before = ident(self.snapshot(camera, full=True))
        self.request_full_frame(camera)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            pic = self.snapshot(camera, full=True)
            if pic is not None and ident(pic) != before:
                return pic
            time.sleep(0.1)
        return None

    def counts_between(self, camera: str, start_ts: float, end_ts: float | None = None,
                       limit: int | None = None) -> list[Entry]:
        """Count envelopes published between two unix times (stream IDs are publish times)."""
        end = "+" if end_ts is None else ts_id(end_ts)
        return self.counts(camera, ts_id(start_ts), end, limit)

    def first_count_ts(self, camera: str) -> float | None:
        """Publish time of the oldest count the stream still holds (None: empty)."""
        first = self.redis.xrange(self.keys.counts(camera), count=1)
        return entry_order(first[0][0].decode())[0] / 1000.0 if first else None

    def rollups(self, camera: str, start_ts: float, end_ts: float | None = None) -> list[Entry]:
        """``crowdstream.rollup.v1`` windows published between two unix times, oldest first."""
        end = "+" if end_ts is None else ts_id(end_ts)
        return self._decode_entries(self.redis.xrange(self.keys.rollup(camera), ts_id(start_ts),
                                                      end))

    def recent_alerts(self, n: int = 200, camera: str | None = None) -> list[Entry]:
        """The newest ``n`` alert events (of one camera, when given), oldest first."""
        entries = self._decode_entries(self.redis.xrevrange(self.keys.alerts(), count=n))
        return [e for e in entries[::-1] if camera is None or e[1].get("camera") == camera]

    def active_alerts(self, n: int = 500) -> dict[str, dict[str, Any]]:
        """Alerts in progress among the newest ``n`` events: alert_id -> its latest event
        (started or updated, not ended)."""
        active: dict[str, dict[str, Any]] = {}
        for _, ev in self.recent_alerts(n):
            if ev.get("event") == "end":
                active.pop(ev.get("alert_id", ""), None)
            else:
                active[ev.get("alert_id", "")] = ev
        return active

    # ------------------------------------------------------------------ control (reload)
    def request_reload(self, camera: str | None = None, origin: str = "console") -> str:
        """Ask every running pipeline on this Redis to re-read its config file and apply zone
        and alert changes (``crowdstream.control.v1``); returns the request id."""
        from pipeline.envelopes import control_request, to_json

        rid = f"{int(time.time() * 1000)}-{os.urandom(4).hex()}"
        env = control_request("reload", rid, time.time(), camera=camera, origin=origin)
        self.redis.xadd(self.keys.control(), {"schema": env["schema"], "data": to_json(env)},
                        maxlen=1000, approximate=True)
        return rid

    def last_control_id(self) -> str:
        """ID of the newest control request ("0-0" when none): follow from there."""
        last = self.redis.xrevrange(self.keys.control(), count=1)
        return last[0][0].decode() if last else "0-0"

    def control_requests(self, last_id: str, block_ms: int | None = 1000) -> list[Entry]:
        """Control requests after ``last_id`` (blocking up to ``block_ms``)."""
        reply = self.redis.xread({self.keys.control(): last_id}, block=block_ms, count=100)
        out: list[Entry] = []
        for _, entries in reply or []:
            out += self._decode_entries(entries)
        return out

    def reply_control(self, reply: dict[str, Any]) -> None:
        """Publish a pipeline's reply (``pipeline.envelopes.control_reply``)."""
        from pipeline.envelopes import to_json

        self.redis.xadd(self.keys.control_replies(), {"schema": reply["schema"],
                                                      "data": to_json(reply)},
                        maxlen=1000, approximate=True)

    def control_replies(self, request_id: str, timeout_s: float = 5.0, want: int = 1
                        ) -> list[dict[str, Any]]:
        """Replies to ``request_id``, waiting up to ``timeout_s`` for ``want`` of them."""
        start = ts_id(float(request_id.split("-")[0]) / 1000.0 - 1.0)
        end = time.monotonic() + timeout_s
        found: list[dict[str, Any]] = []
        while True:
            found = [m for _, m in self._decode_entries(
                self.redis.xrange(self.keys.control_replies(), start, "+"))
                if m.get("request_id") == request_id]
            if len(found) >= want or time.monotonic() >= end:
                return found
            time.sleep(0.1)

    def tail_ids(self, streams: list[str]) -> dict[str, str]:
        """The newest entry ID of each stream ("0-0" when empty): read from there for new
        entries only."""
        if self.cluster:
            revs = [self.redis.xrevrange(k, count=1) for k in streams]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for k in streams:
                pipe.xrevrange(k, count=1)
            revs = pipe.execute()
        return {k: (r[0][0].decode() if r else "0-0") for k, r in zip(streams, revs, strict=True)}

    def follow_cameras(self, cameras: list[str], last_ids: dict[str, str] | None = None,
                       block_ms: int = 1000) -> tuple[list[Entry], dict[str, str]]:
        """One read of new count and status entries of several cameras and of the alerts
        stream: (entries in ID order, the IDs to pass next time). Streams not in ``last_ids``
        (a camera seen for the first time) are read from their newest entry on. On a cluster
        each stream is read on its own without blocking (one slot per call). Raises
        ``ServerGone`` when the server goes away."""
        import redis

        ids = dict(last_ids or {})
        streams = [self.keys.alerts()]
        for c in cameras:
            streams += [self.keys.counts(c), self.keys.status(c)]
        try:
            missing = [k for k in streams if k not in ids]
            if missing:
                ids.update(self.tail_ids(missing))
            if self.cluster:
                reply = [r for k in streams
                         for r in (self.redis.xread({k: ids[k]}, count=200) or [])]
                if not reply:
                    time.sleep(block_ms / 4000.0)
            else:
                reply = self.redis.xread({k: ids[k] for k in streams}, block=block_ms,
                                         count=200) or []
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise self._gone(e) from e
        out: list[Entry] = []
        for stream, entries in reply:
            key = stream.decode() if isinstance(stream, bytes) else stream
            decoded = self._decode_entries(entries)
            if decoded:
                ids[key] = decoded[-1][0]
            out += decoded
        out.sort(key=lambda e: entry_order(e[0]))
        return out, ids
