"""One thread that follows every camera's counts, status and the alerts stream through
``CrowdClient.follow_cameras`` and fans the news out to the browsers (server-sent events).

However many browsers are open, Redis sees one reader. Counts are coalesced per camera per read
(a browser needs the newest count, not every frame's); status changes and alert events are sent
as they come. Each subscriber has a bounded queue: a slow browser loses old events, never slows
the hub.

Example::

    hub = LiveHub(source)
    hub.start()
    q = hub.subscribe(loop)          # asyncio.Queue of event dicts ({"t": "count", ...})
    ...
    hub.unsubscribe(q); hub.stop()
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import redis

from engines.log import get_logger
from engines.redact import redact
from pipeline.client import ServerGone
from pipeline.schema import ALERT_SCHEMA, COUNT_SCHEMA, STATUS_SCHEMA
from pipeline.web.source import DataSource

CAMERAS_EVERY_S = 2.0  # how often the camera set is re-read (new cameras appear)
MIN_READ_INTERVAL_S = 0.05  # reads at most this often: batches a busy site's counts
QUEUE_MAX = 256


class LiveHub:
    """Follows the streams of every published (or configured) camera; see the module docstring."""

    def __init__(self, source: DataSource) -> None:
        self.source = source
        self.log = get_logger("console.hub")
        self.latest: dict[str, dict[str, Any]] = {}  # camera -> newest count envelope
        self.status: dict[str, dict[str, Any]] = {}  # camera -> newest status envelope
        self.cameras: list[str] = []
        self.connected = False
        self.reads = 0
        self._subs: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-hub", daemon=True)

    # ------------------------------------------------------------------ subscribers
    def subscribe(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        with self._lock:
            self._subs.append((loop, q))
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subs = [(lp, s) for lp, s in self._subs if s is not q]

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def hello(self) -> dict[str, Any]:
        """The state a new subscriber starts from."""
        return {"t": "hello", "connected": self.connected, "cameras": list(self.cameras),
                "latest": dict(self.latest), "status": dict(self.status)}

    def _publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs)
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(_offer, q, event)
            except RuntimeError:  # its loop closed: the subscriber is gone
                self.unsubscribe(q)

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3.0)

    def _set_connected(self, ok: bool, error: str = "") -> None:
        if ok != self.connected:
            self.connected = ok
            self._publish({"t": "server", "connected": ok, "error": error})
            if ok:
                self.log.info("following Redis", url=self.source.status()["url"])
            else:
                self.log.warning("Redis not reachable", error=error)

    def _run(self) -> None:
        ids: dict[str, str] | None = None
        next_cams = 0.0
        while not self._stop.is_set():
            try:
                client = self.source.client()
                now = time.monotonic()
                if now >= next_cams:
                    self._refresh_cameras(client)
                    next_cams = now + CAMERAS_EVERY_S
                t0 = time.monotonic()
                entries, ids = client.follow_cameras(self.cameras, ids, block_ms=500)
                self.reads += 1
                self._set_connected(True)
                self._dispatch(entries)
                rest = MIN_READ_INTERVAL_S - (time.monotonic() - t0)
                if rest > 0:
                    self._stop.wait(rest)
            except (ServerGone, redis.ConnectionError, redis.TimeoutError, OSError) as e:
                self._set_connected(False, str(e))
                self.source.lost(e)
                ids = None  # a restarted server may hold other IDs: start again from its tail
                self._stop.wait(1.0)
            except Exception as e:  # noqa: BLE001 - a bad entry must not end the live view
                self.log.error("live read failed", error=f"{type(e).__name__}: {e}")
                self._stop.wait(1.0)

    def _refresh_cameras(self, client: Any) -> None:
        names = set(client.cameras())
        cfg = None
        try:
            cfg = self.source.config()
        except Exception:  # noqa: BLE001 - a config being edited: keep what Redis says
            cfg = None
        if cfg is not None:
            names |= set(cfg.cameras)
            for cam, c in cfg.cameras.items():
                if not c.enabled and cam not in self.status:
                    self.status[cam] = {"camera": cam, "state": "offline",
                                        "reason": "disabled (enabled: false)", "ts": None}
        cams = sorted(names)
        if cams != self.cameras:
            new = [c for c in cams if c not in self.latest]
            for cam, env in client.latest_many(new).items():
                if env is not None:
                    self._remember(cam, env)
            self.cameras = cams
            self._publish({"t": "cameras", "cameras": cams})

    def _remember(self, cam: str, latest: dict[str, Any]) -> None:
        if "frame_index" in latest:
            env = {k: v for k, v in latest.items() if not k.startswith("status")}
            if env.get("snapshot") is None and "snapshot_frame_index" in latest:
                env["snapshot"] = {"frame_index": latest["snapshot_frame_index"]}
            self.latest[cam] = env
        if "status" in latest:
            self.status[cam] = {"camera": cam, "state": latest["status"],
                                "reason": redact(str(latest.get("status_reason", ""))),
                                "ts": latest.get("status_ts")}

    def _dispatch(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        newest: dict[str, dict[str, Any]] = {}
        for _, msg in entries:
            schema = msg.get("schema")
            cam = str(msg.get("camera", ""))
            if schema == COUNT_SCHEMA:
                prev = newest.get(cam) or self.latest.get(cam) or {}
                if msg.get("snapshot") is None and prev.get("snapshot") is not None:
                    # keep pointing at the newest picture while counts without one arrive
                    msg = {**msg, "snapshot": prev["snapshot"]}
                if msg.get("heatmap") is None and prev.get("heatmap") is not None:
                    msg = {**msg, "heatmap": prev["heatmap"]}
                newest[cam] = msg
            elif schema == STATUS_SCHEMA:
                # a reason may quote the source (a URL): never serve its credentials
                msg = {**msg, "reason": redact(str(msg.get("reason", "")))}
                self.status[cam] = msg
                self._publish({"t": "status", **msg})
            elif schema == ALERT_SCHEMA:
                self._publish({"t": "alert", **msg})
        for cam, msg in newest.items():
            self.latest[cam] = msg
            self._publish({"t": "count", **msg})


def _offer(q: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    """Put without waiting; a full queue drops its oldest event (a slow browser)."""
    if q.full():
        try:
            q.get_nowait()
        except asyncio.QueueEmpty:
            pass
    q.put_nowait(event)


__all__ = ["LiveHub"]
