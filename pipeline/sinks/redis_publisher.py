"""The Redis connection and publisher behind ``RedisSink``: turns buffered messages into pipelined
commands (stream entries, heatmap hashes, the latest-state hash, pub/sub notifications), tracks
the connection state, and gives every stream entry an exactly-once ID.

Exactly-once across a broken connection: every stream entry gets an explicit, increasing ID when
it is first sent. A batch whose outcome is unknown (the connection broke mid-round-trip) is
returned by ``send`` as unresolved; the caller re-sends it first (``BackgroundWorker.retry_first``)
and entries the server had already applied are then refused as "equal or smaller ID" and counted
as delivered (``duplicates``), not stored twice.

Example::

    pub = RedisPublisher("redis://127.0.0.1:6379", cfg.redis, dropped=lambda: 0)
    pub.open()
    if pub.ensure_connected(sleep=time.sleep):
        unresolved = pub.send([Message("status", "lobby", status_envelope(st))])
    pub.close()
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from engines.log import get_logger
from engines.video import redact_url
from pipeline.config import RedisConfig
from pipeline.envelopes import heatmap_envelope, heatmap_ref, notify_envelope, to_json
from pipeline.heatmaps import PNG_BITS, downscale_sum, encode_heatmap
from pipeline.redis_keys import RedisKeys

log = get_logger("redis")

MessageKind = Literal["count", "status", "alert"]
Command = tuple[str, tuple[Any, ...], dict[str, Any]]
STATUS_STREAM_MAXLEN = 1000


@dataclass
class Message:
    """One buffered message: its envelope (``pipeline.envelopes``) and, for a count due for a
    heatmap, a snapshot of the density map. The send state is filled on the first attempt and
    reused on retries so the server can refuse a duplicate."""

    kind: MessageKind
    camera: str
    envelope: dict[str, Any]
    density: np.ndarray | None = None
    stream: str = ""
    entry_id: str = ""
    commands: list[Command] = field(default_factory=list)
    attempted: bool = False
    auto_id: bool = False  # re-send with id "*": the stream was ahead of our ID clock
    latest: dict[str, str] = field(default_factory=dict)  # fields for the latest-state hash
    note: str = ""  # pub/sub notification


class Unresolved(Exception):
    """The connection broke while these messages were in flight: their outcome is unknown."""

    def __init__(self, items: list[Message], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.items = items
        self.cause = cause


def connect(url: str, cfg: RedisConfig) -> Any:
    """A ``redis.Redis`` client for ``url`` with credentials from the configured env vars.

    The client itself never retries: the publisher owns reconnection and backoff.
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


def is_conn_error(e: BaseException) -> bool:
    """True for errors that mean "the server is not reachable now" (retry later)."""
    import redis
    from redis.exceptions import ClusterDownError, MasterDownError, TryAgainError

    return isinstance(e, (redis.ConnectionError, redis.TimeoutError, OSError, ClusterDownError,
                          MasterDownError, TryAgainError))


def _execute(pipe: Any, items: list[Message]) -> list[Any]:
    """Run a pipeline; any connection failure, raised or in a reply, leaves ``items`` unresolved
    while other per-command errors come back as replies."""
    try:
        results = pipe.execute(raise_on_error=False)
    except Exception as e:
        if is_conn_error(e):
            raise Unresolved(items, e) from e
        raise
    for r in results:
        if isinstance(r, BaseException) and is_conn_error(r):
            raise Unresolved(items, r)
    return results


class RedisPublisher:
    """Connection state, exactly-once IDs and pipelined sends (see the module docstring).

    ``dropped()`` returns the sink's drop count so far, published in the latest-state hash as
    ``publish_dropped_total``; ``delivered(camera)`` (optional) is called for every message the
    server confirmed (an ``OutputTally``'s). Counters: ``published`` (delivered), ``duplicates`` (re-sent
    entries the server already had), ``failed`` (refused by the server or not encodable),
    ``reconnects``.
    """

    def __init__(self, url: str, cfg: RedisConfig, dropped: Callable[[], int],
                 delivered: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.cfg = cfg
        self.keys = RedisKeys(cfg.namespace)
        self._dropped = dropped
        self._delivered = delivered
        self._client: Any = None
        self._last_id: dict[str, tuple[int, int]] = {}
        self._known_cameras: set[str] = set()
        self._backoff = 0.1
        self.connected = False
        self.ever_tried = False
        self._was_connected = False
        self.published = 0
        self.duplicates = 0
        self.failed = 0
        self.reconnects = 0

    def open(self) -> None:
        self._client = connect(self.url, self.cfg)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ connection state
    def set_state(self, connected: bool, error: BaseException | None = None,
                  pending: int = 0) -> None:
        """Log once per state change, not once per failed attempt."""
        if connected == self.connected and self.ever_tried:
            return
        url = redact_url(self.url)
        if connected:
            if self._was_connected:
                self.reconnects += 1
            self._was_connected = True
            log.info("connected", url=url, reconnects=self.reconnects,
                     publish_dropped_total=self._dropped(), pending=pending)
        else:
            log.warning("unreachable" if not self._was_connected else "disconnected", url=url,
                        error=f"{type(error).__name__}: {error}" if error else "", pending=pending)
        self.ever_tried = True
        self.connected = connected

    def ensure_connected(self, sleep: Callable[[float], bool], pending: int = 0) -> bool:
        """True when connected (pinging first if the last state was "down"); else back off with
        ``sleep`` (doubling up to 2 s) and return False."""
        if self.connected:
            return True
        try:
            self._client.ping()
        except Exception as e:  # noqa: BLE001 - unreachable: wait and try again
            self.set_state(False, e, pending)
            sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 2.0)
            return False
        self.set_state(True, pending=pending)
        self._backoff = 0.1
        return True

    # ------------------------------------------------------------------ encoding
    def _next_id(self, stream: str, ts: float) -> str:
        ms = int(ts * 1000)
        last_ms, last_seq = self._last_id.get(stream, (0, -1))
        if ms <= last_ms:
            ms, seq = last_ms, last_seq + 1
        else:
            seq = 0
        self._last_id[stream] = (ms, seq)
        return f"{ms}-{seq}"

    def _heatmap_commands(self, it: Message) -> tuple[list[Command], dict[str, Any]]:
        """HSET + EXPIRE of the message's heatmap; returns the commands and the envelope ref."""
        env, cfg = it.envelope, self.cfg
        assert it.density is not None
        key = self.keys.heatmap(it.camera, env["frame_index"])
        small, f = downscale_sum(it.density, cfg.heatmap_max_side)
        data, scale = encode_heatmap(small, cfg.heatmap_format)
        meta = heatmap_envelope(
            camera=it.camera, frame_index=env["frame_index"], capture_ts=env["capture_ts"],
            fmt=cfg.heatmap_format, shape=small.shape, scale=scale,
            frame_size=env["frame_size"], cell_pixels=env["cell_pixels"] * f,
            count=float(it.density.sum(dtype=np.float64)),
            bits=PNG_BITS if cfg.heatmap_format == "png" else None)
        mapping: dict[str, Any] = {k: str(v) for k, v in meta.items()}
        mapping["data"] = data
        it.density = None  # encoded; free the snapshot
        cmds: list[Command] = [("hset", (key,), {"mapping": mapping}),
                               ("expire", (key, cfg.heatmap_ttl_s), {})]
        return cmds, heatmap_ref(key, cfg.heatmap_format, cfg.heatmap_ttl_s)

    def _build(self, it: Message) -> None:
        """Encode a message into its commands (the first is always its XADD)."""
        now = time.time()
        cam, env, k = it.camera, it.envelope, self.keys
        cmds: list[Command] = []
        latest: dict[str, Any] = {}
        note: dict[str, Any] = {}
        if it.kind == "count":
            it.stream = k.counts(cam)
            it.entry_id = self._next_id(it.stream, now)
            if it.density is not None:
                cmds, ref = self._heatmap_commands(it)
                env["heatmap"] = ref
                latest["heatmap_key"] = note["heatmap_key"] = ref["key"]
            env["publish_ts"] = now
            text = to_json(env)
            latest.update({"frame_index": env["frame_index"], "count": env["count"],
                           "raw_count": env["raw_count"], "capture_ts": env["capture_ts"],
                           "publish_ts": now, "stream_id": it.entry_id, "envelope": text,
                           "engine_id": env["engine_id"],
                           "publish_dropped_total": self._dropped()})
            note.update({"frame_index": env["frame_index"], "count": env["count"],
                         "stream_id": it.entry_id})
            maxlen = self.cfg.stream_maxlen
        elif it.kind == "status":
            it.stream = k.status(cam)
            it.entry_id = self._next_id(it.stream, now)
            text = to_json(env)
            latest.update({"status": env["state"], "status_reason": env["reason"],
                           "status_ts": env["ts"]})
            note["state"] = env["state"]
            maxlen = STATUS_STREAM_MAXLEN
        else:
            it.stream = k.alerts()
            it.entry_id = self._next_id(it.stream, now)
            text = to_json(env)
            note.update({"alert_id": env["alert_id"], "event": env["event"]})
            maxlen = self.cfg.stream_maxlen
        xadd: Command = ("xadd", (it.stream, {"schema": env["schema"], "data": text}),
                         {"id": it.entry_id, "maxlen": maxlen, "approximate": True})
        cmds.insert(0, xadd)
        # the latest-state hash is written once per camera per batch (see send), not per item
        it.latest = {key: str(v) for key, v in latest.items()}
        if cam not in self._known_cameras:
            cmds.append(("sadd", (k.cameras(), cam), {}))
        if self.cfg.pubsub:
            it.note = to_json(notify_envelope(cam, it.kind, now, **note))
        it.commands = cmds

    # ------------------------------------------------------------------ sending
    def send(self, batch: list[Message]) -> list[Message]:
        """Send a batch in one pipelined round trip; returns the messages whose outcome is
        unknown (the connection broke: re-send them first). Refusals are counted, not raised."""
        try:
            self._send(batch)
        except Unresolved as u:
            for it in u.items:
                it.attempted = True
            self.set_state(False, u.cause, len(u.items))
            return u.items
        except Exception as e:  # noqa: BLE001 - a bug, not an outage: do not retry forever
            self.failed += len(batch)
            log.error("publish failed", error=f"{type(e).__name__}: {e}", messages=len(batch))
        return []

    def _encoded(self, batch: list[Message]) -> list[Message]:
        ok: list[Message] = []
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
        return ok

    def _send(self, batch: list[Message]) -> None:
        batch = self._encoded(batch)
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
        self._publish_cluster_notes(last_note)
        retry_auto = self._count_replies(batch, spans, results)
        if retry_auto:
            self._send_auto_ids(retry_auto)

    def _publish_cluster_notes(self, last_note: dict[str, str]) -> None:
        """Cluster pipelines cannot PUBLISH: send the newest notification per camera directly
        (live UIs only need the newest; the streams keep every message)."""
        for cam, note in last_note.items():
            try:
                self._client.publish(self.keys.live(cam), note)
            except Exception as e:
                if is_conn_error(e):
                    break  # the next batch finds the outage; the data itself was delivered
                raise

    def _count_replies(self, batch: list[Message], spans: list[int],
                       results: list[Any]) -> list[Message]:
        """Count each message's XADD reply; returns those to re-send with a server-chosen ID."""
        pos = 0
        retry_auto: list[Message] = []
        for it, n in zip(batch, spans, strict=True):
            first = results[pos]
            pos += n
            if isinstance(first, BaseException):
                if "equal or smaller" in str(first) and not it.auto_id:
                    if it.attempted:
                        self.duplicates += 1  # applied before the connection broke
                        self._confirm(it)
                    else:
                        retry_auto.append(it)  # the stream is ahead of our clock: let Redis pick
                    continue
                self.failed += 1
                log.error("message refused", camera=it.camera, stream=it.stream,
                          error=str(first)[:200])
                continue
            self._confirm(it)
            self._known_cameras.add(it.camera)
        return retry_auto

    def _confirm(self, it: Message) -> None:
        self.published += 1
        if self._delivered is not None:
            self._delivered(it.camera)

    def _send_auto_ids(self, items: list[Message]) -> None:
        for it in items:
            it.auto_id = True  # at-least-once from here: Redis assigns the ID
        pipe = self._client.pipeline(transaction=False)
        for it in items:
            _, args, kwargs = it.commands[0]
            pipe.xadd(*args, **{**kwargs, "id": "*"})
        replies = _execute(pipe, items)
        for it, r in zip(items, replies, strict=True):
            if isinstance(r, BaseException):
                self.failed += 1
                log.error("message refused", camera=it.camera, error=str(r)[:200])
            else:
                self._confirm(it)
