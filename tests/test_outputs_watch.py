"""``crowdstream watch``: reads a real server's streams, prints JSON lines or human lines, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _outputs_helpers import make_result

from engines.redact import redact_url
from pipeline.config import RedisConfig
from pipeline.events import CameraStatus
from pipeline.redis_embedded import EmbeddedRedis
from pipeline.schema import validate
from pipeline.sinks.redis_sink import RedisSink

REPO = Path(__file__).resolve().parent.parent

RUN = """
import sys
from pipeline.cli import main
rc = main(sys.argv[1:])
print("TORCH_IMPORTED", "torch" in sys.modules, file=sys.stderr)
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    srv = EmbeddedRedis(tmp_path_factory.mktemp("watch") / "redis")
    srv.start()
    sink = RedisSink(RedisConfig(url=srv.url, namespace="w", heatmap_every_s=3600), srv.url)
    sink.open()
    sink.write_status(CameraStatus("hall", "online", "first frame", time.time()))
    for i in range(6):
        r = make_result("hall", i)
        r.zone_counts = {"stage": 1.5}
        sink.write(r)
    sink.publish_alert({"schema": "crowdstream.alert.v1", "event": "start", "alert_id": "a1",
                        "rule": "busy", "camera": "hall", "zone": None, "metric": "count",
                        "severity": "warning", "threshold": 5.0, "clear": 5.0, "before": 4.0,
                        "after": 12.0, "started_ts": 1.0, "ts": 1.0, "frame_index": 3})
    assert sink.flush()
    sink.close()
    yield srv
    srv.stop()


def _watch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN, "watch", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_watch_json_replays_and_never_imports_torch(published: EmbeddedRedis) -> None:
    p = _watch("hall", "--url", published.url, "--namespace", "w", "--json", "--from-start",
               "--count", "6")
    assert p.returncode == 0, p.stderr
    assert "TORCH_IMPORTED False" in p.stderr
    msgs = [json.loads(line) for line in p.stdout.splitlines()]
    for m in msgs:
        validate(m)
    kinds = [m["schema"].split(".")[1] for m in msgs]
    assert kinds.count("count") == 6 and "status" in kinds
    assert [m["frame_index"] for m in msgs if m["schema"] == "crowdstream.count.v1"] == list(range(6))


def test_watch_human_lines(published: EmbeddedRedis) -> None:
    p = _watch("hall", "--url", published.url, "--namespace", "w", "--from-start", "--count", "6",
               "--interval", "0")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "status: online" in out and "-- status online: first frame" in out
    assert "!! ALERT start warning busy: count 4.0 -> 12.00" in out
    assert "frame       5" in out and "zones stage=1.5" in out


def test_watch_unreachable_server_says_so() -> None:
    p = _watch("hall", "--url", "redis://127.0.0.1:1")
    assert p.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:1" in p.stderr


def test_watch_finds_the_runs_embedded_server_from_the_config(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("run_dir: run\nredis: {namespace: cfgns}\ncameras:\n  door: x.mp4\n")
    p = _watch("door", "--config", str(cfg_file))
    assert p.returncode == 1 and "no embedded server running under" in p.stderr
    with EmbeddedRedis(tmp_path / "run" / "redis") as srv:  # what `crowdstream run` starts
        sink = RedisSink(RedisConfig(url=srv.url, namespace="cfgns"), srv.url)
        sink.open()
        sink.write(make_result("door", 0))
        assert sink.flush()
        sink.close()
        p = _watch("door", "--config", str(cfg_file), "--json", "--from-start", "--count", "1")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout.splitlines()[0])["camera"] == "door"


def _popen_watch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", RUN, "watch", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_watch_ends_with_one_line_when_the_server_goes_away(tmp_path: Path) -> None:
    srv = EmbeddedRedis(tmp_path / "redis")
    srv.start()
    p = _popen_watch("gone", "--url", srv.url)
    try:
        assert p.stdout is not None and "watching 'gone'" in p.stdout.readline()
        srv.stop()  # the run ends and its embedded server with it
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
        srv.stop()
    assert p.returncode == 1, err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("crowdstream watch:")]
    # the server's address, never its password
    assert "lost the connection to Redis" in line and redact_url(srv.url) in line
    assert srv.password and srv.password not in err


def test_watch_ends_when_its_camera_goes_offline_not_at_an_older_run_s_end(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as srv:
        sink = RedisSink(RedisConfig(url=srv.url, namespace="end"), srv.url)
        sink.open()
        now = time.time()
        # an earlier run of the same camera ended; the current one is running
        for state, reason in (("online", "first frame"), ("offline", "stopped"),
                              ("starting", "opening"), ("online", "first frame")):
            sink.write_status(CameraStatus("gate", state, reason, now))
        sink.write(make_result("gate", 0))
        assert sink.flush()
        p = _popen_watch("gate", "--url", srv.url, "--namespace", "end", "--from-start",
                         "--interval", "0")
        try:
            assert p.stdout is not None and "status: online" in p.stdout.readline()
            assert "-- status online" in p.stdout.readline()
            assert "-- status offline: stopped" in p.stdout.readline()  # replayed, not the end
            sink.write(make_result("gate", 1))
            sink.write_status(CameraStatus("gate", "finished", "end of file", time.time()))
            assert sink.flush()
            out, err = p.communicate(timeout=30)
        finally:
            p.kill()
            sink.close()
    assert p.returncode == 0, err
    assert "frame       1" in out and "-- status finished: end of file" in out
    assert err.strip().splitlines()[0] == ("crowdstream watch: camera 'gate' is finished "
                                           "(end of file): nothing more to follow")
