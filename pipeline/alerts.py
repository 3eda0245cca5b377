"""Density alerts: rules on a camera's or zone's count / density, with hysteresis, a minimum
duration and a cooldown, emitting ``crowdstream.alert.v1`` events (start / update / end).

Per rule the state machine is::

    idle --value >= threshold--> pending --(value >= clear for min_duration_s, cooldown over)-->
    active --value < clear--> idle (end event, cooldown starts)

A pending alert falls back to idle when the value drops below ``clear``; while active, ``update``
events report changes at most every ``update_every_s``. Noise around the threshold therefore gives
one start and one end per real crossing. Times are the frames' capture timestamps.

Example::

    sink = AlertSink(cfg.cameras, listeners=[redis_sink.publish_alert],
                     webhook=WebhookNotifier(cfg.webhook))
    sink.write(result)              # after the zone sink filled zone counts
    sink.active("lobby")            # alerts in progress, for overlays
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.log import get_logger
from engines.video import redact_url
from pipeline.config import AlertRuleConfig, CameraConfig, WebhookConfig
from pipeline.envelopes import alert_envelope
from pipeline.events import CameraStatus
from pipeline.results import FrameResult, Sink
from pipeline.worker import BackgroundWorker

Listener = Callable[[dict[str, Any]], None]


@dataclass
class _RuleState:
    state: str = "idle"  # idle | pending | active
    since: float = 0.0  # pending: first time at/above the threshold
    started_ts: float = 0.0
    alert_id: str = ""
    last_event_ts: float = 0.0
    last_event_value: float | None = None
    last_end_ts: float | None = None
    prev_value: float | None = None  # value of the previous frame (a start's "before")
    before_start: float | None = None
    peak: float = 0.0


class RuleEngine:
    """Evaluates one camera's rules frame by frame; returns the events each frame produced."""

    def __init__(self, camera: str, rules: list[AlertRuleConfig],
                 run_id: str | None = None) -> None:
        self.camera = camera
        self.rules = rules
        self.run_id = run_id
        self.states = {r.name: _RuleState() for r in rules}

    @staticmethod
    def value(rule: AlertRuleConfig, r: FrameResult) -> float | None:
        """The rule's metric for this frame; None when it is not available (no event then)."""
        if rule.zone is None:
            if rule.metric == "count":
                return r.count
            if rule.metric == "density":
                cells = r.density.map.size
                return r.count / cells if cells else None
            return r.density_m2
        if rule.metric == "count":
            return r.zone_counts.get(rule.zone)
        if rule.metric == "density":
            return r.zone_density.get(rule.zone)
        return r.zone_density_m2.get(rule.zone)

    def _event(self, rule: AlertRuleConfig, st: _RuleState, kind: str, before: float | None,
               after: float, ts: float, frame_index: int, reason: str | None = None) -> dict[str, Any]:
        ev = alert_envelope(
            event=kind, alert_id=st.alert_id, rule=rule.name, camera=self.camera, zone=rule.zone,
            metric=rule.metric, severity=rule.severity, threshold=rule.threshold,
            clear=rule.clear_level, before=before, after=after, peak=st.peak,
            started_ts=st.started_ts, ts=ts, frame_index=frame_index, reason=reason,
            run_id=self.run_id)
        st.last_event_ts, st.last_event_value = ts, float(after)
        return ev

    def step(self, r: FrameResult) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        ts = r.capture_ts
        for rule in self.rules:
            st = self.states[rule.name]
            v = self.value(rule, r)
            if v is None:
                continue
            v = float(v)
            clear = rule.clear_level
            if st.state == "idle" and v >= rule.threshold:
                st.state, st.since, st.before_start = "pending", ts, st.prev_value
            if st.state == "pending":
                if v < clear:
                    st.state = "idle"
                else:
                    cooled = st.last_end_ts is None or ts - st.last_end_ts >= rule.cooldown_s
                    if ts - st.since >= rule.min_duration_s and cooled:
                        st.state, st.started_ts, st.peak = "active", ts, v
                        st.alert_id = f"{self.camera}:{rule.name}:{int(ts * 1000)}"
                        events.append(self._event(rule, st, "start", st.before_start, v, ts,
                                                  r.frame_index))
            elif st.state == "active":
                st.peak = max(st.peak, v)
                if v < clear:
                    events.append(self._event(rule, st, "end", st.last_event_value, v, ts,
                                              r.frame_index, reason="cleared"))
                    st.state, st.last_end_ts = "idle", ts
                elif rule.update_every_s > 0 and ts - st.last_event_ts >= rule.update_every_s \
                        and v != st.last_event_value:
                    events.append(self._event(rule, st, "update", st.last_event_value, v, ts,
                                              r.frame_index))
            st.prev_value = v
        return events

    def replace_rules(self, rules: list[AlertRuleConfig], ts: float,
                      frame_index: int = 0) -> list[dict[str, Any]]:
        """New rules (live reload): an unchanged rule keeps its state (an active alert stays
        active); the active alerts of rules removed or changed end (reason ``rule_changed``)."""
        kept = {r.name: r for r in rules}
        events = []
        for rule in self.rules:
            st = self.states[rule.name]
            if kept.get(rule.name) != rule and st.state == "active":
                last = st.last_event_value if st.last_event_value is not None else st.peak
                events.append(self._event(rule, st, "end", last, last, ts, frame_index,
                                          "rule_changed"))
        old = {r.name: r for r in self.rules}
        self.states = {r.name: (self.states[r.name] if old.get(r.name) == r else _RuleState())
                       for r in rules}
        self.rules = list(rules)
        return events

    def end_all(self, ts: float, reason: str, frame_index: int = 0) -> list[dict[str, Any]]:
        """End every active alert (camera offline, shutdown)."""
        events = []
        for rule in self.rules:
            st = self.states[rule.name]
            if st.state == "active":
                last = st.last_event_value if st.last_event_value is not None else st.peak
                events.append(self._event(rule, st, "end", last, last, ts, frame_index, reason))
                st.last_end_ts = ts
            st.state = "idle"
        return events

    def active(self) -> list[dict[str, Any]]:
        """Alerts in progress with the metric's value at the latest frame (for overlays; events
        report changes at most every ``update_every_s``, the overlay shows every frame's)."""
        out = []
        for rule in self.rules:
            st = self.states[rule.name]
            if st.state == "active":
                value = st.prev_value if st.prev_value is not None else st.last_event_value
                out.append({"rule": rule.name, "zone": rule.zone, "severity": rule.severity,
                            "metric": rule.metric, "value": value, "peak": st.peak,
                            "started_ts": st.started_ts, "alert_id": st.alert_id})
        return out


class AlertSink(Sink):
    """Second output sink: evaluates every camera's rules and hands events to the listeners
    (the Redis sink's ``publish_alert``) and to the webhook, whose thread it opens and closes.

    Rules read zone values from the result (the zone sink runs first).
    """

    def __init__(self, cameras: dict[str, CameraConfig], listeners: list[Listener] | None = None,
                 webhook: WebhookNotifier | None = None, run_id: str | None = None) -> None:
        self.engines = {name: RuleEngine(name, cam.alerts, run_id) for name, cam in cameras.items()
                        if cam.alerts}
        self.webhook = webhook
        self.listeners = list(listeners or [])
        if webhook is not None:
            self.listeners.append(webhook.send)
        self._last_frame: dict[str, int] = {}
        self.events_emitted = 0

    def open(self) -> None:
        if self.webhook is not None:
            self.webhook.open()

    def _emit(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.events_emitted += 1
            get_logger("alerts", camera=ev["camera"]).info(
                f"alert {ev['event']}", rule=ev["rule"], zone=ev["zone"], value=round(ev["after"], 3),
                severity=ev["severity"])
            for fn in self.listeners:
                fn(ev)

    def write(self, result: FrameResult) -> None:
        eng = self.engines.get(result.camera)
        if eng is None:
            return
        self._last_frame[result.camera] = result.frame_index
        self._emit(eng.step(result))

    def write_status(self, status: CameraStatus) -> None:
        """A camera going offline or finishing ends its active alerts (reason camera_<state>);
        the run stopping it (``CameraStatus.stopped``) ends them with reason ``shutdown``."""
        eng = self.engines.get(status.camera)
        if eng is not None and status.ended:
            reason = "shutdown" if status.stopped else f"camera_{status.state}"
            self._emit(eng.end_all(status.ts, reason, self._last_frame.get(status.camera, 0)))

    def reconfigure(self, camera: str, cam: CameraConfig, run_id: str | None = None) -> None:
        """New alert rules of one camera (live reload, see ``RuleEngine.replace_rules``)."""
        eng = self.engines.get(camera)
        if eng is None:
            if cam.alerts:
                self.engines[camera] = RuleEngine(camera, list(cam.alerts), run_id)
            return
        self._emit(eng.replace_rules(list(cam.alerts), time.time(),
                                     self._last_frame.get(camera, 0)))
        if not cam.alerts:
            del self.engines[camera]

    def active(self, camera: str) -> list[dict[str, Any]]:
        eng = self.engines.get(camera)
        return eng.active() if eng else []

    def close(self) -> None:
        """End the alerts still active (reason shutdown), then stop the webhook after it sent
        them."""
        try:
            now = time.time()
            for cam, eng in self.engines.items():
                self._emit(eng.end_all(now, "shutdown", self._last_frame.get(cam, 0)))
        finally:
            if self.webhook is not None:
                self.webhook.close()


class WebhookNotifier:
    """POSTs alert events as JSON from a background worker (bounded queue, retries, backoff).

    A full queue drops the new event (``dropped`` counts them, and those left unsent at close);
    4xx answers other than 408/429 are not retried (the receiver refused the event itself).
    """

    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        self.log = get_logger("webhook")
        self._worker: BackgroundWorker[dict[str, Any]] = BackgroundWorker(
            "webhook", self._handle, max_items=cfg.queue_max, drop="newest",
            on_drop=self._log_drop)
        self.sent = 0
        self.failed = 0

    @property
    def dropped(self) -> int:
        return self._worker.dropped

    def open(self) -> None:
        self._worker.start()

    def send(self, event: dict[str, Any]) -> None:
        """Queue one event (never blocks)."""
        self._worker.put(event)

    def _log_drop(self, event: dict[str, Any]) -> None:
        self.log.warning("queue full, dropping new events", camera=event.get("camera"),
                         alert_id=event.get("alert_id"), queue_max=self.cfg.queue_max)

    def _handle(self, batch: list[dict[str, Any]]) -> None:
        for ev in batch:
            self.post(ev)

    def post(self, event: dict[str, Any]) -> bool:
        """Deliver one event now (with retries); True when the receiver answered 2xx."""
        body = json.dumps(event).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "crowdstream",
                   **self.cfg.headers}
        url = redact_url(self.cfg.url)
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.retries + 1):
            req = urllib.request.Request(self.cfg.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    resp.read()
                self.sent += 1
                return True
            except urllib.error.HTTPError as e:
                err = f"HTTP {e.code}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    self.log.error("event refused", url=url, status=e.code,
                                   alert_id=event.get("alert_id"))
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                err = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.cfg.retries:
                self.log.warning("post failed, retrying", url=url, error=err,
                                 attempt=attempt + 1, retry_in_s=delay)
                if self._worker.sleep(delay):
                    break  # closing: abandon the backoff
                delay *= 2
        self.failed += 1
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then stop; the rest counts as dropped."""
        left = self._worker.close(timeout, join_timeout_s=self.cfg.timeout_s + 1)
        if left:
            self.log.warning("unsent at close", events=left, dropped_total=self.dropped)
