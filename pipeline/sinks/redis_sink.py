"""Publish counts, heatmaps, camera status and alerts to Redis / Valkey (schema ``crowdstream.*.v1``).

Three parts, one job each:

* the envelope (``pipeline.envelopes.count_envelope``, the same as the JSON-lines sink writes) is
  built in ``write()``, with a snapshot of the density map when a heatmap is due;
* a bounded outage buffer (``pipeline.worker.BackgroundWorker``): ``write()`` only appends to it.
  With Redis unreachable the pipeline keeps counting: the buffer fills up to
  ``buffer_max_messages`` / ``buffer_max_mb``, then the oldest messages are dropped and counted
  exactly (``stats()["dropped"]``, ``publish_dropped_total`` in the latest-state hash);
* the publisher (``pipeline.sinks.redis_publisher.RedisPublisher``) on the worker's thread:
  connection state and reconnects, heatmap encoding, exactly-once stream IDs, pipelined batches.
  On reconnect the buffer is flushed in order; a batch whose reply was lost is re-sent first and
  entries the server already had are not stored twice.

For the operator console (``crowdstream serve``), which never reads video: with
``redis.snapshot_every_s`` > 0 the sink wants frames, and at that rate copies a downscaled frame
(``pipeline.sinks.snapshots.take_snapshot``) into the message, JPEG-encoded on the publisher's
thread into ``<ns>:{cam}:snapshot``; a snapshot's frame always gets a heatmap too. Snapshots are
skipped while Redis is unreachable (they are transient; the outage buffer keeps the counts).

The sink never starts a server: it is given the URL (the run's embedded server is a service the
supervisor starts).

Example::

    sink = RedisSink(cfg.redis, "redis://127.0.0.1:6379")
    sink.open()
    sink.write(result)                 # never waits on Redis
    sink.write_status(CameraStatus("lobby", "online", "first frame", time.time()))
    sink.close()                       # flushes (bounded by drain_timeout_s)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.log import get_logger
from engines.video import redact_url
from pipeline.config import RedisConfig
from pipeline.envelopes import count_envelope, status_envelope
from pipeline.events import CameraStatus
from pipeline.results import FrameResult, OutputTally, Sink
from pipeline.sinks.redis_publisher import Message, RedisPublisher
from pipeline.sinks.snapshots import take_snapshot
from pipeline.worker import BackgroundWorker

log = get_logger("redis")

ITEM_OVERHEAD_BYTES = 1024  # rough size of one count message in the buffer, for the memory bound


class RedisSink(Sink):
    """The Redis output sink; see the module docstring for the buffering guarantees.

    ``url`` is required (``None`` is an error naming ``redis.url``); ``run_id``, when given, is
    added to every count and status envelope; ``tally`` (the post stage's) is told of every
    message queued and every message the server confirmed, so what was never published is known
    even after this process is killed.
    """

    def __init__(self, cfg: RedisConfig, url: str | None, *, drain_timeout_s: float = 10.0,
                 run_id: str | None = None, tally: OutputTally | None = None) -> None:
        if not url:
            raise ValueError("redis.url: RedisSink needs the Redis URL to publish to; set "
                             "redis.url, or start the run's embedded server first (the "
                             "supervisor does)")
        self.cfg = cfg
        self.url = url
        self.run_id = run_id
        self._drain_timeout_s = drain_timeout_s
        self._last_heatmap: dict[str, float] = {}
        self._last_snapshot: dict[str, float] = {}
        # the post stage hands frames only to sinks that want them: only when snapshots are on
        self.wants_frames = cfg.snapshot_every_s > 0
        self._tally = tally
        self.publisher = RedisPublisher(url, cfg, dropped=lambda: self.dropped,
                                        delivered=tally.delivered if tally else None)
        self._worker: BackgroundWorker[Message] = BackgroundWorker(
            "redis-publisher", self._handle, max_items=cfg.buffer_max_messages,
            max_bytes=int(cfg.buffer_max_mb * 1024 * 1024), drop="oldest",
            batch_max=cfg.batch_max, ready=self._ready, on_drop=self._log_drop)

    # ------------------------------------------------------------------ counters
    @property
    def dropped(self) -> int:
        """Messages lost: evicted from the full buffer, or left unsent at close."""
        return self._worker.dropped

    @property
    def published(self) -> int:
        """Messages confirmed delivered."""
        return self.publisher.published

    @property
    def duplicates(self) -> int:
        """Re-sent entries the server already had (delivered once, not twice)."""
        return self.publisher.duplicates

    @property
    def failed(self) -> int:
        """Messages the server refused (e.g. WRONGTYPE, OOM) or that could not be encoded."""
        return self.publisher.failed

    @property
    def reconnects(self) -> int:
        return self.publisher.reconnects

    @property
    def connected(self) -> bool:
        return self.publisher.connected

    def stats(self) -> dict[str, Any]:
        p = self.publisher
        return {"connected": p.connected, "published": p.published, "dropped": self.dropped,
                "pending": self._worker.pending, "duplicates": p.duplicates, "failed": p.failed,
                "reconnects": p.reconnects}

    # ------------------------------------------------------------------ sink API
    def open(self) -> None:
        self.publisher.open()
        self._worker.start()

    def write(self, result: FrameResult) -> None:
        """Buffer one frame's count (and heatmap when due). Never blocks on Redis."""
        cam = result.camera
        snap = None
        if result.frame is not None and self.publisher.connected and \
                _due(self._last_snapshot, cam, result.capture_ts, self.cfg.snapshot_every_s):
            full = cam in self.publisher.full_wanted
            if full:
                self.publisher.full_wanted.discard(cam)
            snap = take_snapshot(result.frame, self.cfg.snapshot_max_width, full=full)
        heat = None
        if _due(self._last_heatmap, cam, result.capture_ts, self.cfg.heatmap_every_s) or \
                snap is not None:  # a snapshot's frame always has its heatmap (the overlay)
            self._last_heatmap[cam] = result.capture_ts
            heat = np.array(result.density.map, dtype=np.float32, copy=True)
        env = count_envelope(result, run_id=self.run_id)
        nbytes = ITEM_OVERHEAD_BYTES + (heat.nbytes if heat is not None else 0) + \
            (snap.nbytes if snap is not None else 0)
        self._put(Message("count", cam, env, heat, snapshot=snap), nbytes)

    def write_status(self, status: CameraStatus) -> None:
        """Buffer a camera state change (starting / online / reconnecting / offline / finished)."""
        env = status_envelope(status, run_id=self.run_id)
        self._put(Message("status", status.camera, env), ITEM_OVERHEAD_BYTES)

    def publish_alert(self, event: dict[str, Any]) -> None:
        """Buffer a ``crowdstream.alert.v1`` event (a listener of the alert sink)."""
        self._put(Message("alert", str(event["camera"]), dict(event)), ITEM_OVERHEAD_BYTES)

    def _put(self, msg: Message, nbytes: int) -> None:
        if self._tally is not None:
            self._tally.queued(msg.camera)  # before the worker can confirm it
        self._worker.put(msg, nbytes)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the buffer is empty (tests, benchmarks). True when it is."""
        return self._worker.flush(timeout)

    def close(self) -> None:
        """Flush what can be flushed within the drain timeout; count the rest as dropped."""
        p = self.publisher
        left = self._worker.close(self._drain_timeout_s,
                                  keep_draining=lambda: p.connected or not p.ever_tried,
                                  join_timeout_s=max(1.0, self.cfg.connect_timeout_s * 3))
        if left:
            log.warning("unsent at close", messages=left, publish_dropped_total=self.dropped)
        log.info("closed", url=redact_url(self.url), published=p.published, dropped=self.dropped,
                 duplicates_avoided=p.duplicates, refused=p.failed, reconnects=p.reconnects)
        p.close()

    # ------------------------------------------------------------------ worker thread
    def _ready(self) -> bool:
        return self.publisher.ensure_connected(self._worker.sleep, self._worker.pending)

    def _handle(self, batch: list[Message]) -> None:
        unresolved = self.publisher.send(batch)
        if unresolved:
            self._worker.retry_first(unresolved)

    def _log_drop(self, item: Message) -> None:
        log.warning("buffer full, dropping oldest", camera=item.camera,
                    buffered=self.cfg.buffer_max_messages, connected=self.connected)


def _due(last: dict[str, float], camera: str, ts: float, every_s: float) -> bool:
    """True (and ``last`` updated) when ``every_s`` passed since the camera's last one; a clock
    that went back counts as due."""
    prev = last.get(camera)
    if prev is None or ts - prev >= every_s or ts < prev:
        last[camera] = ts
        return True
    return False
