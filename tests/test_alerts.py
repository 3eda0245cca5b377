"""Alert rules on scripted count sequences, and the webhook against a local HTTP server."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
from _outputs_helpers import make_result

from engines.yamlconfig import ConfigError
from pipeline.alerts import AlertSink, WebhookNotifier
from pipeline.config import WebhookConfig, config_from_dict
from pipeline.events import CameraStatus
from pipeline.schema import validate


def run(rule: dict, values: list[float], dt: float = 1.0, camera_status: str | None = None):
    cfg = config_from_dict({"cameras": {"c": {"url": "x.mp4", "alerts": [
        {"name": "crowd", "threshold": 10, **rule}]}}})
    events: list[dict] = []
    sink = AlertSink(cfg.cameras, listeners=[events.append])
    t0 = 1_700_000_000.0
    for i, v in enumerate(values):
        sink.write(make_result("c", i, count=v, ts=t0 + i * dt))
    if camera_status:
        sink.write_status(CameraStatus("c", camera_status, "test", t0 + len(values) * dt))
    for ev in events:
        validate(ev)
    return events, sink, t0


def kinds(events: list[dict]) -> list[tuple[str, int]]:
    return [(e["event"], e["frame_index"]) for e in events]


def test_hysteresis_one_event_per_real_crossing() -> None:
    noisy = [5, 9, 10.2, 9.8, 10.1, 9.6, 10.4, 9.9, 12, 11, 8.5, 9.7, 10.3, 7.9, 5, 4]
    # no hysteresis (clear = threshold): noise near 10 starts and ends many alerts
    ev, _, _ = run({"cooldown_s": 0, "update_every_s": 0}, noisy)
    assert len([e for e in ev if e["event"] == "start"]) == 5
    # clear at 8: one alert, from the first crossing to the first value below 8
    ev, _, t0 = run({"clear": 8, "cooldown_s": 0, "update_every_s": 0}, noisy)
    assert kinds(ev) == [("start", 2), ("end", 13)]
    start, end = ev
    assert start["before"] == 9 and start["after"] == pytest.approx(10.2)
    assert end["after"] == pytest.approx(7.9) and end["peak"] == pytest.approx(12)
    assert end["alert_id"] == start["alert_id"] and end["duration_s"] == pytest.approx(11)
    assert end["reason"] == "cleared"


def test_min_duration_ignores_short_spikes() -> None:
    seq = [5, 15, 15, 5, 15, 15, 15, 15, 15, 5]
    ev, _, _ = run({"min_duration_s": 3, "cooldown_s": 0, "update_every_s": 0}, seq)
    # the 2-frame spike never starts; the 5-frame run starts 3 s after it began (frame 4 -> 7)
    assert kinds(ev) == [("start", 7), ("end", 9)]


def test_cooldown_delays_the_next_start() -> None:
    seq = [15, 5, 15, 15, 15, 15, 15, 15, 5]
    ev, _, _ = run({"cooldown_s": 4, "update_every_s": 0}, seq)
    # ended at t=1; above again from t=2 but the next start waits until t=5
    assert kinds(ev) == [("start", 0), ("end", 1), ("start", 5), ("end", 8)]
    assert ev[0]["alert_id"] != ev[2]["alert_id"]


def test_updates_carry_before_and_after_and_status_ends_alerts() -> None:
    seq = [12, 13, 14, 14, 16, 17]
    ev, sink, _ = run({"update_every_s": 2, "cooldown_s": 0}, seq, camera_status="offline")
    assert kinds(ev) == [("start", 0), ("update", 2), ("update", 4), ("end", 5)]
    assert (ev[1]["before"], ev[1]["after"]) == (12, 14)
    assert (ev[2]["before"], ev[2]["after"]) == (14, 16)
    assert ev[3]["reason"] == "camera_offline" and sink.active("c") == []


def test_active_alerts_show_the_latest_value_between_events() -> None:
    ev, sink, _ = run({"update_every_s": 60, "cooldown_s": 0}, [12, 13, 17.5])
    assert kinds(ev) == [("start", 0)]  # no update event yet (every 60 s)
    (a,) = sink.active("c")
    assert a["value"] == 17.5 and a["peak"] == 17.5  # what the overlay draws: now, not frame 0


def test_zone_density_rules_and_config_checks() -> None:
    with pytest.raises(ConfigError, match=r"cameras\.c\.alerts\[0\]\.zone: unknown zone "
                                          r"'nowhere'.*door"):
        config_from_dict({"cameras": {"c": {"url": "x.mp4",
            "zones": [{"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]]}],
            "alerts": [{"name": "z", "zone": "nowhere", "threshold": 1}]}}})
    with pytest.raises(ConfigError, match=r"cameras\.c\.alerts\[0\]\.metric: .*ground calibration"):
        config_from_dict({"cameras": {"c": {"url": "x.mp4",
            "alerts": [{"name": "m2", "metric": "density_m2", "threshold": 1}]}}})
    with pytest.raises(ConfigError, match="clear"):
        config_from_dict({"cameras": {"c": {"url": "x", "alerts": [
            {"name": "a", "threshold": 1, "clear": 2}]}}})


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
        else:
            _Hook.received.append({"body": body, "auth": self.headers.get("Authorization")})
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_server():
    _Hook.received, _Hook.fail_first = [], 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_webhook_retries_with_backoff_then_delivers(hook_server) -> None:
    port = hook_server.server_address[1]
    _Hook.fail_first = 2
    wh = WebhookNotifier(WebhookConfig(url=f"http://127.0.0.1:{port}/hook", retries=3,
                                       backoff_s=0.05, timeout_s=2, headers={"Authorization": "t"}))
    wh.open()
    events, _, _ = run({"clear": 8, "cooldown_s": 0, "update_every_s": 0}, [5, 12, 5])
    t0 = time.perf_counter()
    for ev in events:
        wh.send(ev)
    wh.close()
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # two backoff waits: 0.05 then 0.1 s
    assert [r["body"]["event"] for r in _Hook.received] == ["start", "end"]
    assert _Hook.received[0]["auth"] == "t" and wh.sent == 2 and wh.failed == 0


def test_webhook_gives_up_on_unreachable_url() -> None:
    wh = WebhookNotifier(WebhookConfig(url="http://127.0.0.1:1/x", retries=2, backoff_s=0.01,
                                       timeout_s=0.5))
    assert wh.post({"alert_id": "a"}) is False
    assert wh.failed == 1 and wh.sent == 0


def test_density_m2_rule_on_a_calibrated_zone() -> None:
    from pipeline.zones import ZoneSink

    # top-down camera, 100 px = 1 m: the left half of a 512x288 frame is 2.56 m x 2.88 m
    cfg = config_from_dict({"cameras": {"c": {
        "url": "x.mp4",
        "calibration": {"homography": [[0.01, 0, 0], [0, 0.01, 0], [0, 0, 1]],
                        "image_size": [512, 288]},
        "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}],
        "alerts": [{"name": "dense", "zone": "left", "metric": "density_m2", "threshold": 2.0,
                    "clear": 1.5, "cooldown_s": 0, "update_every_s": 0}]}}})  # passes the checks
    zones = ZoneSink(cfg.cameras)
    events: list[dict] = []
    alerts = AlertSink(cfg.cameras, listeners=[events.append])
    area = 2.56 * 2.88
    for i, people in enumerate([5, 10, 16, 17, 12, 3]):  # p/m2: .68 1.36 2.17 2.31 1.63 .41
        r = make_result("c", i, ts=1e9 + i)
        r.density.map[:] = 0
        r.density.map[:, :32] = people / (36 * 32)
        zones.write(r)
        alerts.write(r)
    assert [(e["event"], e["frame_index"]) for e in events] == [("start", 2), ("end", 5)]
    assert events[0]["after"] == pytest.approx(16 / area)
    assert events[0]["metric"] == "density_m2"
