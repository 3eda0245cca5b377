"""The post stage's live values for the metrics: people per camera and zone, density per m^2 and
alert flags, written into the run's ``ValueBoard`` (shared memory) on every counted frame.

Why shared memory and not a message per frame: the values are born in the post process and the
Prometheus endpoint lives in the supervisor. A fixed record of float64s (one per key, laid out
from the config before any process starts) costs the post stage a few stores per frame, never
blocks it, needs no Redis, survives a post-stage restart (the supervisor owns the segment) and is
read by the supervisor in its usual poll, together with the frame counters that already live in
shared memory. A queue would cost a pickle per frame and could back up; reading Redis would
make the metrics depend on Redis being configured and reachable.

Keys (``live_value_keys``), each a tuple of strings:

- ``("people", camera)``: smoothed count of the latest frame;
- ``("density_m2", camera)``: people per m^2 of the calibrated ground (calibrated cameras);
- ``("zone_people", camera, zone)`` and ``("zone_density_m2", camera, zone)`` (calibrated);
- ``("alert", camera, rule, zone, severity)``: 1.0 while the rule is active, else 0.0 (``zone``
  is "" for a rule on the whole camera).

Example::

    board = segments.value_board("values", live_value_keys(cfg.cameras))     # supervisor
    sink = LiveValuesSink(board.handle(), active_alerts=alert_sink.active)   # post stage
    sink.open(); sink.write(result)
    board.read()[("people", "lobby")]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.config import CameraConfig
from pipeline.events import CameraStatus
from pipeline.results import FrameResult, Sink
from pipeline.shm import ValueBoard, ValueBoardHandle

ActiveAlerts = Callable[[str], list[dict[str, Any]]]

__all__ = ["LiveValuesSink", "live_value_keys"]


def live_value_keys(cameras: Mapping[str, CameraConfig]) -> list[tuple[str, ...]]:
    """Every key the post stage publishes for these cameras (enabled ones), in a fixed order."""
    keys: list[tuple[str, ...]] = []
    for name, cam in cameras.items():
        if not cam.enabled:
            continue
        calibrated = cam.calibration is not None
        keys.append(("people", name))
        if calibrated:
            keys.append(("density_m2", name))
        for z in cam.zones:
            keys.append(("zone_people", name, z.name))
            if calibrated:
                keys.append(("zone_density_m2", name, z.name))
        for rule in cam.alerts:
            keys.append(("alert", name, rule.name, rule.zone or "", rule.severity))
    return keys


class _CameraKeys:
    """Board indices of one camera's values."""

    def __init__(self) -> None:
        self.people: int | None = None
        self.density_m2: int | None = None
        self.zones: list[tuple[str, int]] = []
        self.zones_m2: list[tuple[str, int]] = []
        self.alerts: dict[str, int] = {}  # rule -> index


class LiveValuesSink(Sink):
    """Writes each result's values into the board (see the module docstring). Runs after the
    zone and alert sinks, so zone values and alert states are those of this frame.
    ``active_alerts``: the alert sink's ``active`` (None: no alert rules)."""

    def __init__(self, board: ValueBoardHandle, active_alerts: ActiveAlerts | None = None) -> None:
        self.handle = board
        self.active_alerts = active_alerts
        self.board: ValueBoard | None = None
        self.cams: dict[str, _CameraKeys] = {}
        for i, key in enumerate(board.keys):
            c = self.cams.setdefault(key[1], _CameraKeys())
            kind = key[0]
            if kind == "people":
                c.people = i
            elif kind == "density_m2":
                c.density_m2 = i
            elif kind == "zone_people":
                c.zones.append((key[2], i))
            elif kind == "zone_density_m2":
                c.zones_m2.append((key[2], i))
            elif kind == "alert":
                c.alerts[key[2]] = i

    def open(self) -> None:
        self.board = ValueBoard.attach(self.handle)
        for c in self.cams.values():  # a restarted post stage starts with no alert active
            for i in c.alerts.values():
                self.board.set(i, 0.0)

    def _alerts(self, camera: str, c: _CameraKeys) -> None:
        if not c.alerts or self.board is None:
            return
        active = {a["rule"] for a in self.active_alerts(camera)} if self.active_alerts else set()
        for rule, i in c.alerts.items():
            self.board.set(i, 1.0 if rule in active else 0.0)

    def write(self, result: FrameResult) -> None:
        c = self.cams.get(result.camera)
        b = self.board
        if c is None or b is None:
            return
        if c.people is not None:
            b.set(c.people, result.count)
        if c.density_m2 is not None:
            b.set(c.density_m2, result.density_m2)
        for zone, i in c.zones:
            b.set(i, result.zone_counts.get(zone))
        for zone, i in c.zones_m2:
            b.set(i, result.zone_density_m2.get(zone))
        self._alerts(result.camera, c)

    def write_status(self, status: CameraStatus) -> None:
        """The alert sink ends a camera's alerts when it goes offline or finishes: show that."""
        c = self.cams.get(status.camera)
        if c is not None:
            self._alerts(status.camera, c)

    def close(self) -> None:
        if self.board is not None:
            for cam, c in self.cams.items():  # the alert sink closed first: alerts ended
                self._alerts(cam, c)
            self.board.close()
            self.board = None
