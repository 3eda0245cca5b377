"""Live changes of a running pipeline: zones and alert rules without a restart.

The supervisor re-reads its own config file on SIGHUP and on a ``reload`` request from Redis (the
operator console sends one after it saved zones: ``CrowdClient.request_reload``), validates it
whole with ``pipeline.config.load_config`` (same overrides as at start) and compares it with the
running config (``live_changes``). If only cameras' ``zones:`` / ``alerts:`` changed, it sends a
``SettingsUpdate`` to the post stage (on its status queue), which rebuilds those cameras' zone
masks and alert rules in place (``pipeline.outputs.apply_camera_settings``); any other change is
refused with a log line (and a reply) saying it needs a restart. The ``serve:`` section is the
console's and never needs one.

Why a Redis stream and not a signal: the console may run on another host than the pipeline, and
one console can watch several pipelines; every supervisor on the Redis reads the control stream
``<ns>:control`` (``ControlListener``) and answers on ``<ns>:control:replies`` with its run id. A
request never carries a path or settings: each pipeline reads only its own config file.

Example::

    changes = live_changes(running_cfg, load_config(running_cfg.source_file))
    if changes.refused:
        log.warning("config change needs a restart", change=changes.refused)
    elif changes.cameras:
        status_q.put(SettingsUpdate({c: new.cameras[c] for c in changes.cameras}))
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from engines.log import get_logger
from pipeline.config import AppConfig

LIVE_KEYS = ("zones", "alerts")  # per camera: applied without a restart
IGNORED_SECTIONS = ("serve", "defaults", "source_file")  # not the pipeline's, or merged already


@dataclass(frozen=True)
class SettingsUpdate:
    """New settings of some cameras, for the post stage: camera -> its whole validated
    ``CameraConfig`` (only ``zones`` and ``alerts`` differ from the running one)."""

    cameras: dict[str, Any]


@dataclass
class LiveChanges:
    """What differs between two configs: the cameras whose zones/alerts changed, and the first
    change that needs a restart (None when there is none)."""

    cameras: list[str] = field(default_factory=list)
    refused: str | None = None


def live_changes(old: AppConfig, new: AppConfig) -> LiveChanges:
    """Compare a running config with a re-read one (see the module docstring)."""
    for name in type(old).model_fields:
        if name in IGNORED_SECTIONS or name == "cameras":
            continue
        if getattr(old, name) != getattr(new, name):
            return LiveChanges(refused=f"section '{name}' changed")
    if set(old.cameras) != set(new.cameras):
        added = sorted(set(new.cameras) - set(old.cameras))
        removed = sorted(set(old.cameras) - set(new.cameras))
        what = ", ".join([f"added {a!r}" for a in added] + [f"removed {r!r}" for r in removed])
        return LiveChanges(refused=f"cameras {what}")
    changed: list[str] = []
    for cam, was in old.cameras.items():
        now = new.cameras[cam]
        if was == now:
            continue
        if was.model_copy(update={k: getattr(now, k) for k in LIVE_KEYS}) != now:
            keys = [k for k in type(was).model_fields if getattr(was, k) != getattr(now, k)
                    and k not in LIVE_KEYS]
            return LiveChanges(refused=f"cameras.{cam}.{keys[0] if keys else '?'} changed")
        changed.append(cam)
    return LiveChanges(cameras=changed)


class ControlListener:
    """A daemon thread following ``<ns>:control`` from its newest entry on; ``requests`` gets
    each ``reload`` request's id. Survives Redis restarts (reconnects, logs state changes)."""

    def __init__(self, client: Any) -> None:  # a pipeline.client.CrowdClient
        self.client = client
        self.requests: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-listener", daemon=True)
        self.log = get_logger("control")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a connection that is gone
            pass

    def reply(self, reply: dict[str, Any]) -> None:
        """Publish a reply; a Redis that is down loses it (the log line stays)."""
        try:
            self.client.reply_control(reply)
        except Exception as e:  # noqa: BLE001 - the requester times out and says so
            self.log.warning("reply not sent", request_id=reply.get("request_id"), error=str(e))

    def _run(self) -> None:
        last: str | None = None
        ok = True
        while not self._stop.is_set():
            try:
                if last is None:
                    last = self.client.last_control_id()
                for eid, msg in self.client.control_requests(last, block_ms=500):
                    last = eid
                    if msg.get("kind") == "reload" and msg.get("request_id"):
                        self.requests.put(str(msg["request_id"]))
                if not ok:
                    self.log.info("control stream readable again")
                ok = True
            except Exception as e:  # noqa: BLE001 - Redis down or restarting: try again
                if ok:
                    self.log.warning("control stream unreadable, retrying",
                                     error=f"{type(e).__name__}: {e}")
                ok = False
                self._stop.wait(1.0)


__all__ = ["ControlListener", "LiveChanges", "SettingsUpdate", "live_changes"]
