"""Everything downstream of a count, as sinks for the post stage: zones -> alerts -> Redis ->
recording (in that order: zone counts feed the alerts, alert events go out through Redis and the
webhook, and the recorder draws zones and active alerts).

Example::

    sinks = build_output_sinks(load_config("configs/demo.yaml"))
    for s in sinks: s.open()
    for s in sinks: s.write(result)          # per frame, in order
    for s in sinks: s.close()
"""

from __future__ import annotations

from typing import Any

from pipeline.alerts import AlertSink, WebhookNotifier
from pipeline.config import AppConfig
from pipeline.results import FrameResult, Sink
from pipeline.zones import ZoneSink


class AlertOutputSink(AlertSink):
    """The alert sink plus the webhook's lifetime (opened and closed with it)."""

    def __init__(self, *args: Any, webhook: WebhookNotifier | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.webhook = webhook

    def open(self) -> None:
        if self.webhook is not None:
            self.webhook.open()

    def close(self) -> None:
        try:
            super().close()  # end events for alerts still active, before the webhook stops
        finally:
            if self.webhook is not None:
                self.webhook.close()


def build_output_sinks(cfg: AppConfig) -> list[Sink]:
    """The output sinks this config asks for, in call order (zones, alerts, Redis, recording).

    The config was checked whole when loaded (alert zones exist, m^2 has a calibration).
    """
    cams = cfg.cameras
    zones = ZoneSink(cams) if any(c.zones or c.calibration for c in cams.values()) else None
    zone_density = zones.cell_density if zones is not None else None
    redis_sink = None
    if cfg.redis.enabled:
        from pipeline.sinks.redis_sink import RedisSink

        redis_sink = RedisSink(cfg.redis, zone_density=zone_density,
                               drain_timeout_s=cfg.runtime.drain_timeout_s, run_dir=cfg.run_dir)
    alerts = None
    if any(c.alerts for c in cams.values()):
        webhook = WebhookNotifier(cfg.webhook) if cfg.webhook is not None else None
        listeners = [s.publish_alert for s in (redis_sink,) if s is not None]
        if webhook is not None:
            listeners.append(webhook.send)
        alerts = AlertOutputSink(cams, listeners=listeners, zone_density=zone_density,
                               webhook=webhook)
    recorder = None
    if any(c.recording.enabled for c in cams.values()):
        from pipeline.sinks.recorder import RecordingSink

        recorder = RecordingSink(cams, run_dir=cfg.run_dir,
                                 active_alerts=alerts.active if alerts is not None else None)
    return [s for s in (zones, alerts, redis_sink, recorder) if s is not None]


__all__ = ["FrameResult", "build_output_sinks"]
