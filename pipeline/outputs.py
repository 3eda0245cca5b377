"""Everything downstream of a count, as sinks for the post stage: zones -> alerts -> [JSON lines]
-> Redis -> recording -> live values (in that order: zone counts feed the alerts, alert events go
out through Redis and the webhook, the JSON line of a frame is written before its message is
queued for Redis, the recorder draws zones and active alerts, and the live values for the
metrics are those of the finished frame).

Example::

    sinks = build_output_sinks(load_config("configs/demo.yaml"))
    for s in sinks: s.open()
    for s in sinks: s.write(result)          # per frame, in order
    for s in sinks: s.close()
"""

from __future__ import annotations

from pipeline.alerts import AlertSink, WebhookNotifier
from pipeline.config import AppConfig
from pipeline.results import OutputTally, Sink
from pipeline.shm import FrameRingHandle, ValueBoardHandle
from pipeline.zones import ZoneSink

__all__ = ["apply_camera_settings", "build_output_sinks"]


def build_output_sinks(cfg: AppConfig, *, redis_url: str | None = None,
                       run_id: str | None = None,
                       recorder_rings: dict[str, FrameRingHandle] | None = None,
                       values: ValueBoardHandle | None = None,
                       tally: OutputTally | None = None,
                       jsonl: Sink | None = None) -> list[Sink]:
    """The output sinks this config asks for, in call order (zones, alerts, ``jsonl`` when
    given, Redis, recording, live values). ``redis_url``: where the Redis sink publishes (default
    ``redis.url``); ``recorder_rings``: camera -> the recorder process's ring (from the
    supervisor); ``values``: the run's value board, where the post stage leaves its live values
    for the metrics.

    Redis publishes to ``redis_url`` (the supervisor passes its embedded server's), else to
    ``redis.url``; neither is an error naming ``redis.url`` (no sink starts a server).
    ``run_id`` (when given) goes into every count, status and alert envelope. ``tally`` (the post
    stage's ``OutputTally``) accounts for every message queued / delivered and every frame not
    recorded. The config was
    checked whole when loaded (alert zones exist, m^2 has a calibration).
    """
    cams = cfg.cameras
    zones = ZoneSink(cams) if any(c.zones or c.calibration for c in cams.values()) else None
    redis_sink = None
    if cfg.redis.enabled:
        from pipeline.sinks.redis_sink import RedisSink

        redis_sink = RedisSink(cfg.redis, redis_url or cfg.redis.url,
                               drain_timeout_s=cfg.runtime.drain_timeout_s, run_id=run_id,
                               tally=tally)
    alerts = None
    if any(c.alerts for c in cams.values()):
        webhook = WebhookNotifier(cfg.webhook) if cfg.webhook is not None else None
        listeners = [redis_sink.publish_alert] if redis_sink is not None else []
        alerts = AlertSink(cams, listeners=listeners, webhook=webhook, run_id=run_id)
    recorder = None
    if any(c.recording.enabled for c in cams.values()):
        from pipeline.sinks.recorder import RecordingSink

        recorder = RecordingSink(cams, rings=recorder_rings,
                                 active_alerts=alerts.active if alerts is not None else None,
                                 tally=tally)
    live = None
    if values is not None:
        from pipeline.sinks.live_values import LiveValuesSink

        live = LiveValuesSink(values, active_alerts=alerts.active if alerts is not None else None)
    return [s for s in (zones, alerts, jsonl, redis_sink, recorder, live) if s is not None]


def apply_camera_settings(sinks: list[Sink], cfg: AppConfig, camera: str,
                          run_id: str | None = None) -> None:
    """Apply a camera's new ``zones:`` and ``alerts:`` (live reload, ``pipeline.reload``) to the
    running sinks, in place. A zone or alert sink the run started without is created (and
    opened) in its place in the order, so a first zone drawn in the console counts at once.
    ``cfg`` is the new config; the recorder keeps drawing the zones it started with."""
    cam = cfg.cameras[camera]
    zones = next((s for s in sinks if isinstance(s, ZoneSink)), None)
    if zones is not None:
        zones.reconfigure(camera, cam)
    elif cam.zones:
        sinks.insert(0, ZoneSink({camera: cam}))
    alerts = next((s for s in sinks if isinstance(s, AlertSink)), None)
    if alerts is not None:
        alerts.reconfigure(camera, cam, run_id)
    elif cam.alerts:
        from pipeline.sinks.redis_sink import RedisSink

        redis_sink = next((s for s in sinks if isinstance(s, RedisSink)), None)
        webhook = WebhookNotifier(cfg.webhook) if cfg.webhook is not None else None
        new = AlertSink({camera: cam}, listeners=[redis_sink.publish_alert] if redis_sink else [],
                        webhook=webhook, run_id=run_id)
        new.open()
        at = 1 if sinks and isinstance(sinks[0], ZoneSink) else 0
        sinks.insert(at, new)
