"""build_output_sinks end to end: zones -> alerts -> Redis -> recording, as the post stage calls them."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _outputs_helpers import make_result
from test_recorder import RecorderProcess

from engines.yamlconfig import ConfigError
from pipeline.client import CrowdClient
from pipeline.config import config_from_dict
from pipeline.events import CameraStatus
from pipeline.outputs import build_output_sinks
from pipeline.redis_embedded import find_running
from pipeline.schema import validate


class _Hook(http.server.BaseHTTPRequestHandler):
    got: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        _Hook.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_no_outputs_configured() -> None:
    cfg = config_from_dict({"redis": {"enabled": False}, "cameras": {"c": "x.mp4"}})
    assert build_output_sinks(cfg) == []


def test_rule_with_unknown_zone_is_a_config_error() -> None:
    """Refused when the config is loaded, before any sink (or process) exists."""
    with pytest.raises(ConfigError, match=r"cams.yaml: cameras.c.alerts\[0\].zone: unknown zone"):
        config_from_dict({"cameras": {"c": {"url": "x.mp4", "alerts": [
            {"name": "a", "zone": "door", "threshold": 3}]}}}, file="cams.yaml")


def test_redis_without_url_or_running_server_is_an_error_naming_the_key(tmp_path: Path) -> None:
    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "cameras": {"c": "x.mp4"}})
    with pytest.raises(ValueError, match=r"^redis\.url: "):
        build_output_sinks(cfg)  # the sink never starts a server itself


def test_full_chain_with_embedded_redis_webhook_and_recording(tmp_path: Path) -> None:
    from pipeline.redis_embedded import EmbeddedRedis

    _Hook.got = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    run_dir = tmp_path / "run"
    cfg = config_from_dict({
        "run_dir": str(run_dir),
        "redis": {"namespace": "e2e", "heatmap_every_s": 0.0},  # no url: the run's server
        "webhook": {"url": f"http://127.0.0.1:{hook.server_address[1]}/alerts", "backoff_s": 0.05},
        "cameras": {"gate": {
            "url": "x.mp4",
            "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}],
            "alerts": [{"name": "crowded-left", "zone": "left", "threshold": 6, "clear": 4,
                        "cooldown_s": 0, "severity": "critical"}],
            "recording": {"enabled": True, "queue_slots": 64}}}})
    from pipeline.services import RedisService

    redis = RedisService(run_dir / "redis")  # what the supervisor starts before the stages
    recorder = RecorderProcess(cfg, {"gate": (144, 256)})
    try:
        sinks = build_output_sinks(cfg, redis_url=redis.start(), recorder_rings=recorder.handles)
        assert [type(s).__name__ for s in sinks] == ["ZoneSink", "AlertSink", "RedisSink",
                                                     "RecordingSink"]
        for s in sinks:
            s.open()
        redis_sink = sinks[2]
        url = redis_sink.url
        assert url and find_running(run_dir / "redis") == url
        for s in sinks:
            s.write_status(CameraStatus("gate", "online", "first frame", time.time()))
        left_counts = [2, 3, 8, 9, 7, 3, 2, 2]
        rng = np.random.default_rng(0)
        for i, lc in enumerate(left_counts):
            r = make_result("gate", i, shape=(18, 32),
                            frame=rng.integers(0, 255, (144, 256, 3), dtype=np.uint8), ts=1.7e9 + i)
            r.density.map[:] = 0
            r.density.map[:, :16] = lc / (18 * 16)
            r.density.map[:, 16:] = 1.0 / (18 * 16)
            r.count = r.raw_count = r.density.count
            for s in sinks:
                s.write(r)
        client = CrowdClient(url, namespace="e2e")
        assert redis_sink.flush()
        msgs = [m for _, m in client.counts("gate")]
        assert [round(m["zones"]["left"]["count"], 3) for m in msgs] == left_counts
        for m in msgs:
            validate(m)
        for s in sinks:
            s.close()
        assert recorder.finish() == 0
        assert find_running(run_dir / "redis") == url  # the sinks never stop the run's server
    finally:
        redis.stop()
    assert find_running(run_dir / "redis") is None
    hook.shutdown()
    hook.server_close()
    # alert events: start at frame 2 (8 >= 6), end at frame 5 (3 < 4)
    assert [(e["event"], e["frame_index"]) for e in _Hook.got] == [("start", 2), ("end", 5)]
    files = list((run_dir / "recordings").rglob("*.mp4"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    # the data survived the server's stop (append-only file): restart and read the alerts
    with EmbeddedRedis(run_dir / "redis") as srv:
        c2 = CrowdClient(srv.url, namespace="e2e")
        alerts = [a for _, a in c2.alerts()]
        assert [a["event"] for a in alerts] == ["start", "end"]
        assert alerts[0]["severity"] == "critical" and alerts[0]["zone"] == "left"
        assert c2.latest("gate")["status"] == "online"
        c2.close()
