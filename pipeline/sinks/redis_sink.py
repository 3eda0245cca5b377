"""Publish counts, heatmaps, camera status and alerts to Redis / Valkey (schema ``crowdstream.*.v1``).

``write()`` only snapshots the result and appends it to a bounded in-memory buffer; a background
thread encodes (JSON, PNG) and sends the buffer in pipelined batches. With Redis unreachable the
pipeline keeps counting: the buffer fills up to ``buffer_max_messages`` / ``buffer_max_mb``, then the
oldest messages are dropped and counted exactly (``stats()["dropped"]``). On reconnect the buffer
is flushed in order.

Exactly-once across a broken connection: every stream entry gets an explicit, increasing ID when it
is first sent. A batch whose outcome is unknown (the connection broke mid-round-trip) is kept apart
from the droppable buffer and re-sent first; entries the server had already applied are then
refused as "equal or smaller ID" and counted as delivered, not duplicated.

Example::

    sink = RedisSink(cfg.redis, url="redis://127.0.0.1:6379")
    sink.open()
    sink.write(result)                 # never waits on Redis
    sink.write_status("lobby", "online", "first frame", time.time())
    sink.close()                       # flushes (bounded by drain_timeout_s)
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.log import get_logger
from pipeline.config import RedisConfig
from pipeline.redis_keys import RedisKeys
from pipeline.results import FrameResult

log = get_logger("redis")

ITEM_OVERHEAD_BYTES = 1024  # rough size of one count message in the buffer, for the memory bound


@dataclass
class _Item:
    """One buffered message: a count (with an optional heatmap), a status change or an alert."""

    kind: str  # "count" | "status" | "alert"
    camera: str
    payload: dict[str, Any]
    density: np.ndarray | None = None  # heatmap snapshot, only at the heatmap rate
    nbytes: int = ITEM_OVERHEAD_BYTES
    # filled when first sent, reused on retries so the server can refuse a duplicate
    stream: str = ""
    entry_id: str = ""
    commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    attempted: bool = False
    auto_id: bool = False  # re-send with id "*": the stream was ahead of our ID clock
    latest: dict[str, str] = field(default_factory=dict)  # fields for the latest-state hash
    note: str = ""  # pub/sub notification


class _Unresolved(Exception):
    """The connection broke while these items were in flight: their outcome is unknown."""

    def __init__(self, items: list[_Item], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.items = items
        self.cause = cause


def downscale_sum(density: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """Sum ``f x f`` blocks (``f`` the smallest integer making both sides <= max_side).

    Summing keeps the total count exact and cells square. Returns (map, f).
    """
    h, w = density.shape
    f = max(1, math.ceil(max(h, w) / max_side))
    if f == 1:
        return density.astype(np.float32, copy=False), 1
    hp, wp = math.ceil(h / f) * f, math.ceil(w / f) * f
    padded = np.zeros((hp, wp), np.float32)
    padded[:h, :w] = density
    return padded.reshape(hp // f, f, wp // f, f).sum(axis=(1, 3)), f


def encode_heatmap(density: np.ndarray, fmt: str) -> tuple[bytes, float]:
    """(bytes, scale): 8-bit grayscale PNG with density = grey * scale, or float16 (scale 1)."""
    d = np.clip(np.nan_to_num(density.astype(np.float32, copy=False)), 0.0, None)
    if fmt == "float16":
        return d.astype("<f2").tobytes(), 1.0
    import cv2

    peak = float(d.max()) if d.size else 0.0
    scale = peak / 255.0 if peak > 0 else 0.0
    grey = np.zeros(d.shape, np.uint8) if scale == 0 else np.rint(d / scale).astype(np.uint8)
    ok, buf = cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding of a heatmap failed")
    return buf.tobytes(), scale


def connect(url: str, cfg: RedisConfig) -> Any:
    """A ``redis.Redis`` client for ``url`` with credentials from the configured env vars.

    The client itself never retries: the sink's worker owns reconnection and backoff.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {
        "socket_connect_timeout": cfg.connect_timeout_s,
        "socket_timeout": max(5.0, 2 * cfg.connect_timeout_s),
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    for attr, key in (("username_env", "username"), ("password_env", "password")):
        env = getattr(cfg, attr)
        if env:
            if env not in os.environ:
                raise ValueError(f"redis.{attr}: environment variable {env} is not set")
            kwargs[key] = os.environ[env]
    if url.startswith("rediss://"):
        for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if getattr(cfg, k):
                kwargs[k] = getattr(cfg, k)
    if cfg.cluster:
        kwargs.pop("health_check_interval")
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def _execute(pipe: Any, items: list[_Item]) -> list[Any]:
    """Run a pipeline; any connection failure, raised or in a reply, leaves ``items`` unresolved
    (the caller keeps them for the reconnect) while other per-command errors come back as replies."""
    try:
        results = pipe.execute(raise_on_error=False)
    except Exception as e:
        if _is_conn_error(e):
            raise _Unresolved(items, e) from e
        raise
    for r in results:
        if isinstance(r, BaseException) and _is_conn_error(r):
            raise _Unresolved(items, r)
    return results


def _is_conn_error(e: BaseException) -> bool:
    import redis
    from redis.exceptions import ClusterDownError, MasterDownError, TryAgainError

    return isinstance(e, (redis.ConnectionError, redis.TimeoutError, OSError, ClusterDownError,
                          MasterDownError, TryAgainError))


class RedisSink:
    """The Redis output sink; see the module docstring for the buffering guarantees.

    ``zone_density`` (optional) returns, for a camera, zone name -> people per density cell for
    the frame being written (the zone sink provides it).
    """

    wants_frames = False

    def __init__(self, cfg: RedisConfig, url: str | None = None,
                 zone_density: Callable[[str], dict[str, float]] | None = None,
                 drain_timeout_s: float = 10.0, run_dir: str | None = None) -> None:
        self.cfg = cfg
        self.url = url or cfg.url
        self.keys = RedisKeys(cfg.namespace)
        self._zone_density = zone_density
        self._drain_timeout_s = drain_timeout_s
        self._run_dir = run_dir
        self._embedded: Any = None
        self._buf: deque[_Item] = deque()
        self._buf_bytes = 0
        self._max_bytes = int(cfg.buffer_max_mb * 1024 * 1024)
        self._uncertain: list[_Item] = []  # sent, outcome unknown: re-sent first, never dropped
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._last_heatmap: dict[str, float] = {}
        self._last_id: dict[str, tuple[int, int]] = {}
        self._known_cameras: set[str] = set()
        self.connected = False
        self._dropping = False
        self.published = 0  # messages confirmed delivered
        self.dropped = 0  # messages lost: evicted from the full buffer or left at close
        self.duplicates = 0  # re-sent entries the server already had (not published twice)
        self.failed = 0  # messages the server refused (e.g. WRONGTYPE, OOM)
        self.reconnects = 0

    # ------------------------------------------------------------------ sink API
    def open(self) -> None:
        if self.url is None:  # the embedded server is the supervisor's service, never ours
            raise RuntimeError("the Redis sink has no URL: set redis.url, or run under "
                               "'crowdstream run', which starts the embedded server")
        self._client = connect(self.url, self.cfg)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="redis-publisher", daemon=True)
        self._thread.start()

    def write(self, result: FrameResult) -> None:
        """Buffer one frame's count (and heatmap when due). Never blocks on Redis."""
        cam = result.camera
        heat = None
        last = self._last_heatmap.get(cam)
        if last is None or result.capture_ts - last >= self.cfg.heatmap_every_s or \
                result.capture_ts < last:
            self._last_heatmap[cam] = result.capture_ts
            heat = np.array(result.density, dtype=np.float32, copy=True)
        zd = self._zone_density(cam) if self._zone_density else {}
        zones: dict[str, dict[str, float | None]] = {}
        for name, c in result.zone_counts.items():
            z: dict[str, float | None] = {"count": float(c), "density": float(zd.get(name, 0.0))}
            if name in result.zone_density_m2:
                z["density_m2"] = float(result.zone_density_m2[name])
            zones[name] = z
        payload = {
            "frame_index": int(result.frame_index),
            "pts": None if result.pts is None else float(result.pts),
            "capture_ts": float(result.capture_ts),
            "result_ts": float(result.result_ts or result.capture_ts),
            "count": max(0.0, float(result.count)),
            "raw_count": max(0.0, float(result.raw_count)),
            "density_m2": None if result.density_m2 is None else float(result.density_m2),
            "zones": zones,
            "engine_id": str(result.engine_id),
            "frame_size": (int(result.frame_size[0]), int(result.frame_size[1])),
            "cell_pixels": float(result.cell_pixels),
        }
        nbytes = ITEM_OVERHEAD_BYTES + (heat.nbytes if heat is not None else 0)
        self._push(_Item("count", cam, payload, heat, nbytes))

    def write_status(self, camera: str, state: str, reason: str, ts: float) -> None:
        """Buffer a camera state change (starting / online / reconnecting / offline / finished)."""
        self._push(_Item("status", camera, {"state": state, "reason": str(reason), "ts": float(ts)}))

    def publish_alert(self, event: dict[str, Any]) -> None:
        """Buffer a ``crowdstream.alert.v1`` event (called by the alert sink)."""
        self._push(_Item("alert", str(event["camera"]), dict(event)))

    def close(self) -> None:
        """Flush what can be flushed within the drain timeout; count the rest as dropped."""
        if self._thread is not None:
            deadline = time.monotonic() + self._drain_timeout_s
            with self._cond:
                while (self._buf or self._uncertain or self._inflight) and \
                        time.monotonic() < deadline and (self.connected or not self._ever_tried):
                    self._cond.wait(0.05)
                self._stop = True
                self._cond.notify_all()
            self._thread.join(timeout=max(1.0, self.cfg.connect_timeout_s * 3))
            self._thread = None
        with self._cond:
            left = len(self._buf) + len(self._uncertain)
            if left:
                self.dropped += left
                log.warning("unsent at close", messages=left, dropped_total=self.dropped)
            self._buf.clear()
            self._uncertain.clear()
            self._buf_bytes = 0
        log.info("closed", url=self.url, published=self.published, dropped=self.dropped,
                 duplicates_avoided=self.duplicates, refused=self.failed, reconnects=self.reconnects)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def stats(self) -> dict[str, Any]:
        with self._cond:
            pending = len(self._buf) + len(self._uncertain)
        return {"connected": self.connected, "published": self.published, "dropped": self.dropped,
                "pending": pending, "duplicates": self.duplicates, "failed": self.failed,
                "reconnects": self.reconnects}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the buffer is empty (tests, benchmarks). True when it is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._buf or self._uncertain or self._inflight:
                if time.monotonic() >= deadline:
                    return False
                self._cond.wait(0.02)
        return True

    # ------------------------------------------------------------------ buffer
    _inflight = False

    def _push(self, item: _Item) -> None:
        with self._cond:
            self._buf.append(item)
            self._buf_bytes += item.nbytes
            while len(self._buf) > self.cfg.buffer_max_messages or \
                    (self._buf_bytes > self._max_bytes and len(self._buf) > 1):
                old = self._buf.popleft()
                self._buf_bytes -= old.nbytes
                self.dropped += 1
                if not self._dropping:
                    self._dropping = True
                    log.warning("buffer full, dropping oldest", camera=item.camera,
                                buffered=len(self._buf), connected=self.connected)
            self._cond.notify()

    def _take(self) -> list[_Item]:
        with self._cond:
            if self._uncertain:
                # outcome unknown: re-send exactly these first, alone, so they stay bounded
                batch, self._uncertain = self._uncertain, []
            else:
                batch = []
                while self._buf and len(batch) < self.cfg.batch_max:
                    it = self._buf.popleft()
                    self._buf_bytes -= it.nbytes
                    batch.append(it)
            if not self._buf:
                self._dropping = False
            self._inflight = bool(batch)
            return batch

    # ------------------------------------------------------------------ worker
    def _set_state(self, connected: bool, error: BaseException | None = None) -> None:
        """Log once per state change, not once per failed attempt."""
        if connected == self.connected and self._ever_tried:
            return
        if connected:
            if self._was_connected:
                self.reconnects += 1
            self._was_connected = True
            log.info("connected", url=self.url, reconnects=self.reconnects,
                     dropped_total=self.dropped, pending=len(self._buf) + len(self._uncertain))
        else:
            log.warning("unreachable" if not self._was_connected else "disconnected", url=self.url,
                        error=f"{type(error).__name__}: {error}" if error else "",
                        pending=len(self._buf) + len(self._uncertain))
        self._ever_tried = True
        self.connected = connected

    _ever_tried = False
    _was_connected = False

    def _run(self) -> None:
        backoff = 0.1
        while True:
            with self._cond:
                while not self._stop and not self._buf and not self._uncertain:
                    self._cond.wait(0.5)
                if self._stop:
                    return
            if not self.connected:
                try:
                    self._client.ping()
                except Exception as e:  # noqa: BLE001 - unreachable: wait and try again
                    self._set_state(False, e)
                    with self._cond:
                        self._cond.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                self._set_state(True)
                backoff = 0.1
            batch = self._take()
            try:
                self._send(batch)
            except _Unresolved as u:
                with self._cond:
                    self._inflight = False
                    for it in u.items:
                        it.attempted = True
                    self._uncertain = u.items + self._uncertain
                self._set_state(False, u.cause)
                continue
            except Exception as e:  # noqa: BLE001 - a bug, not an outage: do not retry forever
                with self._cond:
                    self._inflight = False
                    self.failed += len(batch)
                log.error("publish failed", error=f"{type(e).__name__}: {e}", messages=len(batch))
                continue
            with self._cond:
                self._inflight = False
                self._cond.notify_all()

    def _next_id(self, stream: str, ts: float) -> str:
        ms = int(ts * 1000)
        last_ms, last_seq = self._last_id.get(stream, (0, -1))
        if ms <= last_ms:
            ms, seq = last_ms, last_seq + 1
        else:
            seq = 0
        self._last_id[stream] = (ms, seq)
        return f"{ms}-{seq}"

    def _build(self, it: _Item) -> None:
        """Encode an item into its commands (the first is always its XADD)."""
        now = time.time()
        cam, p, k = it.camera, it.payload, self.keys
        cmds: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        latest: dict[str, Any] = {}
        note: dict[str, Any] = {"schema": "crowdstream.notify.v1", "camera": cam, "kind": it.kind,
                                "ts": now}
        if it.kind == "count":
            it.stream = k.counts(cam)
            it.entry_id = self._next_id(it.stream, now)
            heat_ref = None
            if it.density is not None:
                heat_key = k.heatmap(cam, p["frame_index"])
                small, f = downscale_sum(it.density, self.cfg.heatmap_max_side)
                data, scale = encode_heatmap(small, self.cfg.heatmap_format)
                fh, fw = p["frame_size"]
                meta = {"schema": "crowdstream.heatmap.v1", "camera": cam,
                        "frame_index": p["frame_index"], "capture_ts": p["capture_ts"],
                        "format": self.cfg.heatmap_format, "height": small.shape[0],
                        "width": small.shape[1], "scale": scale, "frame_height": fh,
                        "frame_width": fw, "cell_pixels": p["cell_pixels"] * f,
                        "count": float(it.density.sum(dtype=np.float64))}
                mapping = {key: str(v) for key, v in meta.items()}
                mapping["data"] = data
                cmds.append(("hset", (heat_key,), {"mapping": mapping}))
                cmds.append(("expire", (heat_key, self.cfg.heatmap_ttl_s), {}))
                heat_ref = {"key": heat_key, "format": self.cfg.heatmap_format,
                            "ttl_s": self.cfg.heatmap_ttl_s}
                latest["heatmap_key"] = heat_key
                note["heatmap_key"] = heat_key
                it.density = None  # encoded; free the snapshot
            env = {"schema": "crowdstream.count.v1", "camera": cam,
                   "frame_index": p["frame_index"], "pts": p["pts"],
                   "capture_ts": p["capture_ts"], "result_ts": p["result_ts"], "publish_ts": now,
                   "count": p["count"], "raw_count": p["raw_count"], "density_m2": p["density_m2"],
                   "zones": p["zones"], "engine_id": p["engine_id"], "heatmap": heat_ref}
            text = json.dumps(env, separators=(",", ":"))
            latest.update({"frame_index": p["frame_index"], "count": p["count"],
                           "raw_count": p["raw_count"], "capture_ts": p["capture_ts"],
                           "publish_ts": now, "stream_id": it.entry_id, "envelope": text,
                           "engine_id": p["engine_id"], "dropped_total": self.dropped})
            note.update({"frame_index": p["frame_index"], "count": p["count"],
                         "stream_id": it.entry_id})
            maxlen = self.cfg.stream_maxlen
        elif it.kind == "status":
            it.stream = k.status(cam)
            it.entry_id = self._next_id(it.stream, now)
            env = {"schema": "crowdstream.status.v1", "camera": cam, **p}
            text = json.dumps(env, separators=(",", ":"))
            latest.update({"status": p["state"], "status_reason": p["reason"],
                           "status_ts": p["ts"]})
            note["state"] = p["state"]
            maxlen = 1000
        else:
            it.stream = k.alerts()
            it.entry_id = self._next_id(it.stream, now)
            text = json.dumps(p, separators=(",", ":"))
            note.update({"alert_id": p["alert_id"], "event": p["event"]})
            maxlen = self.cfg.stream_maxlen
        schema = {"count": "crowdstream.count.v1", "status": "crowdstream.status.v1",
                  "alert": "crowdstream.alert.v1"}[it.kind]
        xadd = ("xadd", (it.stream, {"schema": schema, "data": text}),
                {"id": it.entry_id, "maxlen": maxlen, "approximate": True})
        cmds.insert(0, xadd)
        # the latest-state hash is written once per camera per batch (see _send), not per item
        it.latest = {key: str(v) for key, v in latest.items()}
        if cam not in self._known_cameras:
            cmds.append(("sadd", (k.cameras(), cam), {}))
        if self.cfg.pubsub:
            it.note = json.dumps(note, separators=(",", ":"))
        it.commands = cmds

    def _send(self, batch: list[_Item]) -> None:
        if not batch:
            return
        ok: list[_Item] = []
        for it in batch:
            if not it.commands:
                try:
                    self._build(it)
                except Exception as e:  # noqa: BLE001 - bad data in one message, not an outage
                    self.failed += 1
                    log.error("message not encodable", camera=it.camera, kind=it.kind,
                              error=f"{type(e).__name__}: {e}")
                    continue
            ok.append(it)
        batch = ok
        if not batch:
            return
        pipe = self._client.pipeline(transaction=False)
        spans = []
        for it in batch:
            spans.append(len(it.commands))
            for i, (name, args, kwargs) in enumerate(it.commands):
                if i == 0 and it.auto_id:
                    kwargs = {**kwargs, "id": "*"}
                getattr(pipe, name)(*args, **kwargs)
        merged: dict[str, dict[str, str]] = {}
        for it in batch:  # in order, so the newest value of each field wins
            merged.setdefault(it.camera, {}).update(it.latest)
        for cam, mapping in merged.items():
            if mapping:
                pipe.hset(self.keys.latest(cam), mapping=mapping)
        last_note: dict[str, str] = {}
        for it in batch:
            if it.note:
                if self.cfg.cluster:
                    last_note[it.camera] = it.note
                else:
                    pipe.publish(self.keys.live(it.camera), it.note)
        results = _execute(pipe, batch)
        for r in results[sum(spans):]:
            if isinstance(r, BaseException):
                log.error("latest-state update or notification refused", error=str(r)[:200])
        # cluster pipelines cannot PUBLISH: send the newest notification per camera directly
        # (live UIs only need the newest; the streams keep every message)
        for cam, note in last_note.items():
            try:
                self._client.publish(self.keys.live(cam), note)
            except Exception as e:
                if _is_conn_error(e):
                    break  # the next batch finds the outage; the data itself was delivered
                raise
        pos = 0
        retry_auto: list[_Item] = []
        for it, n in zip(batch, spans, strict=True):
            res = results[pos:pos + n]
            pos += n
            first = res[0]
            if isinstance(first, BaseException):
                if "equal or smaller" in str(first) and not it.auto_id:
                    if it.attempted:
                        self.duplicates += 1  # applied before the connection broke
                        self.published += 1
                    else:
                        retry_auto.append(it)  # the stream is ahead of our clock: let Redis pick
                    continue
                self.failed += 1
                log.error("message refused", camera=it.camera, stream=it.stream,
                          error=str(first)[:200])
                continue
            self.published += 1
            self._known_cameras.add(it.camera)
        if retry_auto:
            for it in retry_auto:
                it.auto_id = True  # at-least-once from here: Redis assigns the ID
            pipe = self._client.pipeline(transaction=False)
            for it in retry_auto:
                name, args, kwargs = it.commands[0]
                pipe.xadd(*args, **{**kwargs, "id": "*"})
            replies = _execute(pipe, retry_auto)
            for it, r in zip(retry_auto, replies, strict=True):
                if isinstance(r, BaseException):
                    self.failed += 1
                    log.error("message refused", camera=it.camera, error=str(r)[:200])
                else:
                    self.published += 1
