"""The Redis connection and publisher behind ``RedisSink``: turns buffered messages into pipelined
commands (stream entries, heatmap hashes, the latest-state hash, pub/sub notifications), tracks
the connection state, and gives every stream entry an exactly-once ID.

Exactly-once across a broken connection: every stream entry gets an explicit, increasing ID when
it is first sent. A batch whose outcome is unknown (the connection broke mid-round-trip) is
returned by ``send`` as unresolved; the caller re-sends it first (``BackgroundWorker.retry_first``)
and entries the server had already applied are then refused as "equal or smaller ID" and counted
as delivered (``duplicates``), not stored twice.

On Redis Cluster every batch is split per primary (the keys' slots) and each part goes down one
connection to its node; a broken node, a ``MOVED`` reply or a slot no one serves leaves the batch
unresolved and the topology is read again before the re-send. With ``redis.wait_replicas: N`` each
part ends with ``WAIT N`` on the same connection, so a message counts as published only once N
replicas of its primary hold it and a failover (the replica takes over) loses nothing that was
counted; fewer replicas in ``wait_timeout_s`` and the part is sent again (already stored entries
are refused as duplicates, as above).

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
from pipeline.envelopes import (
    heatmap_envelope,
    heatmap_ref,
    notify_envelope,
    rollup_envelope,
    snapshot_envelope,
    snapshot_ref,
    to_json,
)
from pipeline.events import END_STATES
from pipeline.heatmaps import PNG_BITS, downscale_sum, encode_heatmap
from pipeline.redis_keys import RedisKeys
from pipeline.sinks.snapshots import (
    FULL_FRAME_QUALITY,
    FULL_FRAME_TTL_S,
    RollupWindow,
    SnapshotFrames,
    encode_jpeg,
)

log = get_logger("redis")

MessageKind = Literal["count", "status", "alert"]
Command = tuple[str, tuple[Any, ...], dict[str, Any]]
STATUS_STREAM_MAXLEN = 1000


@dataclass
class Message:
    """One buffered message: its envelope (``pipeline.envelopes``) and, for a count due for a
    heatmap, a snapshot of the density map (and, due for a snapshot, the frame's pixels). The
    send state is filled on the first attempt and reused on retries so the server can refuse a
    duplicate."""

    kind: MessageKind
    camera: str
    envelope: dict[str, Any]
    density: np.ndarray | None = None
    snapshot: SnapshotFrames | None = None
    probe: int = -1  # index in commands of the GETDEL of the camera's full-frame request
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


def connection_kwargs(url: str, cfg: RedisConfig) -> dict[str, Any]:
    """Client options for ``url``: timeouts, no client-side retries, credentials from the
    configured env vars and TLS files (``rediss://``). Readers of the run (``resume``) use the
    same options as the publisher."""
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
    return kwargs


def connect(url: str, cfg: RedisConfig) -> Any:
    """A ``redis.Redis`` (or ``redis.RedisCluster`` with ``cluster: true``) client for ``url``.

    The client itself never retries: the publisher owns reconnection and backoff.
    """
    import redis

    cls = redis.RedisCluster if cfg.cluster else redis.Redis
    return cls.from_url(url, **connection_kwargs(url, cfg))


def is_conn_error(e: BaseException) -> bool:
    """True for errors that mean "the server is not reachable now" (retry later). On a cluster
    that includes a slot that moved (``MOVED``/``ASK``: a failover or resharding) or that no
    node serves yet: read the topology again and re-send."""
    import redis
    from redis.exceptions import (
        AskError,
        ClusterDownError,
        MasterDownError,
        MovedError,
        SlotNotCoveredError,
        TryAgainError,
    )

    return isinstance(e, (redis.ConnectionError, redis.TimeoutError, OSError, ClusterDownError,
                          MasterDownError, TryAgainError, MovedError, AskError,
                          SlotNotCoveredError))


class ReplicasBehind(Exception):
    """``WAIT`` returned fewer replicas than ``redis.wait_replicas`` within the timeout."""


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
        # cameras a client asked a full-resolution frame of (read by the sink's write)
        self.full_wanted: set[str] = set()
        self._rollups: dict[str, RollupWindow] = {}
        self.replicas_ok = True  # the last WAIT (if any) saw redis.wait_replicas replicas
        self._stale_topology = False  # cluster: read the slot map again before the next send

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
            self._ping()
        except Exception as e:  # noqa: BLE001 - unreachable: wait and try again
            self.set_state(False, e, pending)
            sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 2.0)
            return False
        self.set_state(True, pending=pending)
        self._backoff = 0.1
        return True

    def _ping(self) -> None:
        """One node answering is not enough on a cluster: every primary must (a dead one keeps
        its slots until a replica takes over), with the slot map read again after a failure."""
        if not self.cfg.cluster:
            self._client.ping()
            return
        if self._stale_topology:
            self._client.nodes_manager.initialize()
            self._stale_topology = False
        self._client.ping(target_nodes=self._client.PRIMARIES)

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

    def _snapshot_commands(self, it: Message, heatmap_key: str | None) -> list[Command]:
        """HSET + EXPIRE of the snapshot JPEG (and of the full frame when one was asked for),
        then the GETDEL that reads the next full-frame request (``it.probe``)."""
        env, cfg, snap = it.envelope, self.cfg, it.snapshot
        assert snap is not None
        cmds: list[Command] = []
        pictures = [(self.keys.snapshot(it.camera), snap.small, cfg.snapshot_quality,
                     cfg.snapshot_ttl_s)]
        if snap.full is not None:
            pictures.append((self.keys.frame(it.camera), snap.full, FULL_FRAME_QUALITY,
                             FULL_FRAME_TTL_S))
        for key, img, quality, ttl in pictures:
            meta = snapshot_envelope(camera=it.camera, frame_index=env["frame_index"],
                                     capture_ts=env["capture_ts"], size=img.shape[:2],
                                     frame_size=snap.frame_size, quality=quality,
                                     heatmap_key=heatmap_key, run_id=env.get("run_id"))
            mapping: dict[str, Any] = {k: str(v) for k, v in meta.items()}
            mapping["data"] = encode_jpeg(img, quality)
            # overwritten in place (every snapshot sets the same fields): a reader never finds
            # the key missing between two snapshots
            cmds += [("hset", (key,), {"mapping": mapping}), ("expire", (key, ttl), {})]
        it.snapshot = None  # encoded; free the pixels
        cmds.append(("getdel", (self.keys.frame_request(it.camera),), {}))
        return cmds

    def _rollup_commands(self, env: dict[str, Any], now: float) -> list[Command]:
        """The XADD of the camera's previous rollup window when this frame starts a new one."""
        if self.cfg.rollup_every_s <= 0:
            return []
        win = self._rollups.setdefault(env["camera"], RollupWindow(self.cfg.rollup_every_s))
        return self._rollup_xadd(env, win.add(env), now)

    def _rollup_end_commands(self, env: dict[str, Any], now: float) -> list[Command]:
        """The XADD of the camera's open window when it ends (``env``: the status, finished or
        offline): no later frame would close it, and the last seconds of a file or a stopped run
        would be lost."""
        win = self._rollups.pop(env["camera"], None)
        return self._rollup_xadd(env, win.summary() if win else None, now)

    def _rollup_xadd(self, env: dict[str, Any], done: dict[str, Any] | None,
                     now: float) -> list[Command]:
        """``done`` (a window's summary) as an XADD; ``env``: the message that closed it."""
        if done is None:
            return []
        camera = env["camera"]
        stream = self.keys.rollup(camera)
        text = to_json(rollup_envelope(camera=camera, run_id=env.get("run_id"), **done))
        return [("xadd", (stream, {"schema": "crowdstream.rollup.v1", "data": text}),
                 {"id": self._next_id(stream, now), "maxlen": self.cfg.rollup_maxlen,
                  "approximate": True})]

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
            if it.snapshot is not None:
                snap_cmds = self._snapshot_commands(it, env["heatmap"] and env["heatmap"]["key"])
                it.probe = len(cmds) + len(snap_cmds)  # after the XADD inserted in front
                cmds += snap_cmds
                env["snapshot"] = snapshot_ref(k.snapshot(cam), env["frame_index"],
                                               self.cfg.snapshot_ttl_s)
                latest["snapshot_frame_index"] = env["frame_index"]
            cmds += self._rollup_commands(env, now)
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
            if env["state"] in END_STATES:
                cmds += self._rollup_end_commands(env, now)
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
        """Send a batch in one pipelined round trip (per primary on a cluster); returns the
        messages whose outcome is unknown (the connection broke, or too few replicas have them:
        re-send them first). Refusals are counted, not raised."""
        try:
            self._send(batch)
        except Unresolved as u:
            for it in u.items:
                it.attempted = True
            if isinstance(u.cause, ReplicasBehind):
                self._replicas_state(False, u.cause)  # connected, just not safe yet
            else:
                self._stale_topology = self.cfg.cluster
                self.set_state(False, u.cause, len(u.items))
            return u.items
        except Exception as e:  # noqa: BLE001 - a bug, not an outage: do not retry forever
            self.failed += len(batch)
            log.error("publish failed", error=f"{type(e).__name__}: {e}", messages=len(batch))
        return []

    def _replicas_state(self, ok: bool, cause: BaseException | None = None) -> None:
        """Log once when replicas fall behind (messages wait, buffered) and once when they are
        back; the WAIT timeout paces the re-sends."""
        if ok != self.replicas_ok:
            if ok:
                log.info("replicas caught up", wait_replicas=self.cfg.wait_replicas)
            else:
                log.warning("replicas behind: holding messages until they have them",
                            error=str(cause), wait_replicas=self.cfg.wait_replicas)
        self.replicas_ok = ok

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
        cmds: list[Command] = []
        spans = []
        for it in batch:
            spans.append(len(it.commands))
            for i, (name, args, kwargs) in enumerate(it.commands):
                if i == 0 and it.auto_id:
                    kwargs = {**kwargs, "id": "*"}
                cmds.append((name, args, kwargs))
        merged: dict[str, dict[str, str]] = {}
        for it in batch:  # in order, so the newest value of each field wins
            merged.setdefault(it.camera, {}).update(it.latest)
        for cam, mapping in merged.items():
            if mapping:
                cmds.append(("hset", (self.keys.latest(cam),), {"mapping": mapping}))
        cmds += [("publish", (self.keys.live(it.camera), it.note), {}) for it in batch if it.note]
        results = self._run(cmds, batch)
        self._replicas_state(True)
        for r in results[sum(spans):]:
            if isinstance(r, BaseException):
                log.error("latest-state update or notification refused", error=str(r)[:200])
        self._read_probes(batch, spans, results)
        retry_auto = self._count_replies(batch, spans, results)
        if retry_auto:
            self._send_auto_ids(retry_auto)

    def _read_probes(self, batch: list[Message], spans: list[int], results: list[Any]) -> None:
        """A set full-frame request key (GETDEL reply) asks the sink for a full frame."""
        pos = 0
        for it, n in zip(batch, spans, strict=True):
            if it.probe >= 0:
                reply = results[pos + it.probe]
                if reply and not isinstance(reply, BaseException):
                    self.full_wanted.add(it.camera)
            pos += n

    def _run(self, cmds: list[Command], items: list[Message]) -> list[Any]:
        """Execute ``cmds`` pipelined and return their replies in order (errors as values);
        ``Unresolved`` when the outcome of any is unknown."""
        if self.cfg.cluster:
            return self._run_cluster(cmds, items)
        return self._run_on(self._client, self.url, cmds, items)

    def _run_on(self, client: Any, where: str, cmds: list[Command],
                items: list[Message]) -> list[Any]:
        """One pipeline on one connection, ending with ``WAIT`` when replicas must confirm (WAIT
        covers the writes made on its own connection, hence the same pipeline)."""
        pipe = client.pipeline(transaction=False)
        for name, args, kwargs in cmds:
            getattr(pipe, name)(*args, **kwargs)
        n = self.cfg.wait_replicas
        if n:
            pipe.execute_command("WAIT", n, int(self.cfg.wait_timeout_s * 1000))
        results = _execute(pipe, items)
        if n:
            acked = results.pop()
            if isinstance(acked, BaseException) or int(acked) < n:
                raise Unresolved(items, ReplicasBehind(
                    f"{redact_url(where)}: {acked} of {n} replica(s) acknowledged within "
                    f"{self.cfg.wait_timeout_s:g} s"))
        return results

    def _run_cluster(self, cmds: list[Command], items: list[Message]) -> list[Any]:
        """Split ``cmds`` by the primary serving each key's slot; one pipeline per primary."""
        groups: dict[str, tuple[Any, list[int]]] = {}
        try:
            for pos, (_, args, _) in enumerate(cmds):
                node = self._client.get_node_from_key(args[0])
                groups.setdefault(node.name, (node, []))[1].append(pos)
        except Exception as e:
            if is_conn_error(e):  # a slot no node serves (mid-failover)
                raise Unresolved(items, e) from e
            raise
        results: list[Any] = [None] * len(cmds)
        for name, (node, positions) in groups.items():
            client = self._client.get_redis_connection(node)
            replies = self._run_on(client, f"redis://{name}", [cmds[p] for p in positions],
                                   items)
            for p, r in zip(positions, replies, strict=True):
                if isinstance(r, BaseException) and is_conn_error(r):  # MOVED, ASK, TRYAGAIN
                    raise Unresolved(items, r)
                results[p] = r
        return results

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
        cmds: list[Command] = []
        for it in items:
            name, args, kwargs = it.commands[0]
            cmds.append((name, args, {**kwargs, "id": "*"}))
        replies = self._run(cmds, items)
        for it, r in zip(items, replies, strict=True):
            if isinstance(r, BaseException):
                self.failed += 1
                log.error("message refused", camera=it.camera, error=str(r)[:200])
            else:
                self._confirm(it)
