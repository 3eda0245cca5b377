"""What the pipeline publishes for the console, and the console's parts that need no pipeline:
snapshots, full frames and rollups through the real Redis sink into a real embedded server; the
live-reload rules on real configs; the chart buckets; the labels file; the request guard on a
real uvicorn server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from _outputs_helpers import make_result, start_server
from console_helpers import http

from pipeline.client import CrowdClient
from pipeline.config import RedisConfig, config_from_dict
from pipeline.labels import LabelError, image_path, labels_dir, save_label_image, set_label
from pipeline.redis_embedded import EmbeddedRedis
from pipeline.reload import live_changes
from pipeline.schema import validate
from pipeline.sinks.redis_sink import RedisSink
from pipeline.web.series import bucket, choose_step


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    srv = start_server(tmp_path_factory.mktemp("valkey_console"))
    yield srv
    srv.stop()


def frame(h: int = 720, w: int = 1280) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    cv2.putText(img, "cs", (w // 3, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 5, (255, 255, 255), 8)
    return img


def publish(sink: RedisSink, camera: str, n: int, t0: float, dt: float,
            pixels: np.ndarray | None) -> None:
    for i in range(n):
        r = make_result(camera, i, shape=(90, 160), cell=8, ts=t0 + i * dt)
        r.frame = pixels if sink.wants_frames else None  # what the post stage does
        r.zone_counts, r.zone_density = {"door": 2.0 + i % 3}, {"door": 0.1}
        sink.write(r)
        r.frame = None


def connect(sink: RedisSink, camera: str) -> None:
    """The publisher connects when it first has something to send: a status."""
    from pipeline.events import CameraStatus

    sink.write_status(CameraStatus(camera, "online", "first frame", time.time()))
    assert wait(lambda: sink.connected)


def wait(pred, timeout: float = 10.0):  # noqa: ANN001, ANN201
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return None


def test_snapshots_at_their_rate_downscaled_with_their_heatmap(server: EmbeddedRedis) -> None:
    cfg = RedisConfig(url=server.url, namespace="snap", snapshot_every_s=1.0,
                      snapshot_max_width=320, snapshot_quality=60, heatmap_every_s=100.0)
    client = CrowdClient(server.url, namespace="snap")
    sink = RedisSink(cfg, cfg.url)
    assert sink.wants_frames
    sink.open()
    connect(sink, "gate")  # snapshots are skipped while Redis is unreachable
    t0 = time.time()
    publish(sink, "gate", 25, t0, 0.1, frame())  # 2.5 s of capture time at 10 fps
    assert sink.flush(10)
    entries = client.counts("gate")
    snaps = [m for _, m in entries if m.get("snapshot")]
    assert [m["frame_index"] for m in snaps] == [0, 10, 20]  # every snapshot_every_s
    for m in snaps:
        validate(m)
        assert m["heatmap"] is not None  # a snapshot's frame always has its heatmap
    pic = client.snapshot("gate")
    assert pic is not None and pic.frame_index == 20
    validate(pic.meta)
    img = cv2.imdecode(np.frombuffer(pic.data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (180, 320, 3) and (pic.meta["frame_width"], pic.meta["frame_height"]) \
        == (1280, 720)
    assert len(pic.data) < 40_000 and pic.meta["heatmap_key"] == client.keys.heatmap("gate", 20)
    assert 0 < client.redis.ttl(client.keys.snapshot("gate")) <= cfg.snapshot_ttl_s
    assert client.latest("gate")["snapshot_frame_index"] == 20
    sink.close()


def test_full_frame_on_request_only(server: EmbeddedRedis) -> None:
    cfg = RedisConfig(url=server.url, namespace="full", snapshot_every_s=0.5,
                      snapshot_max_width=320)
    client = CrowdClient(server.url, namespace="full")
    sink = RedisSink(cfg, cfg.url)
    sink.open()
    connect(sink, "gate")
    t0 = time.time()
    pixels = frame()
    publish(sink, "gate", 10, t0, 0.1, pixels)
    assert sink.flush(10)
    assert client.snapshot("gate", full=True) is None  # nobody asked
    client.request_full_frame("gate")
    got: dict[str, object] = {}

    def ask() -> None:
        got["pic"] = client.wait_full_frame("gate", timeout_s=10)

    asker = threading.Thread(target=ask)
    asker.start()
    for k in range(1, 6):  # the run keeps counting while the client waits
        publish(sink, "gate", 10, t0 + k, 0.1, pixels)
        sink.flush(10)
        time.sleep(0.2)
    asker.join(15)
    pic = got.get("pic")
    assert pic is not None
    img = cv2.imdecode(np.frombuffer(pic.data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (720, 1280, 3)  # the decoded frame's own resolution
    assert pic.meta["quality"] == 95
    assert client.redis.get(client.keys.frame_request("gate")) is None  # consumed
    sink.close()


def test_no_frames_wanted_without_snapshots(server: EmbeddedRedis) -> None:
    cfg = RedisConfig(url=server.url, namespace="nosnap", snapshot_every_s=0)
    sink = RedisSink(cfg, cfg.url)
    assert not sink.wants_frames  # the post stage then hands it no frame at all


def test_rollups_summarise_windows(server: EmbeddedRedis) -> None:
    cfg = RedisConfig(url=server.url, namespace="roll", rollup_every_s=1.0, snapshot_every_s=0)
    client = CrowdClient(server.url, namespace="roll")
    sink = RedisSink(cfg, cfg.url)
    sink.open()
    t0 = float(int(time.time()))  # on a window boundary
    results = [make_result("hall", i, count=float(i), ts=t0 + i * 0.25) for i in range(12)]
    for r in results:
        r.zone_counts, r.zone_density = {"door": r.count / 2}, {"door": 0.0}
        sink.write(r)
    assert sink.flush(10)
    rolls = [m for _, m in client.rollups("hall", t0 - 60)]
    assert len(rolls) == 2  # windows 0 and 1 are complete; window 2 is still open
    # the camera's end closes its open window (no later frame would), once
    from pipeline.events import CameraStatus

    for state in ("finished", "offline"):
        sink.write_status(CameraStatus("hall", state, "end of file", time.time()))
    assert sink.flush(10)
    rolls = [m for _, m in client.rollups("hall", t0 - 60)]
    assert len(rolls) == 3
    for w, m in enumerate(rolls):
        validate(m)
        counts = [float(i) for i in range(4 * w, 4 * w + 4)]
        assert m["start_ts"] == t0 + w and m["frames"] == 4
        assert m["count_mean"] == pytest.approx(np.mean(counts))
        assert (m["count_min"], m["count_max"]) == (counts[0], counts[-1])
        assert m["zones"]["door"]["count_mean"] == pytest.approx(np.mean(counts) / 2)
    sink.close()


def test_series_buckets_weighted_means_and_gaps() -> None:
    rows = [{"ts": 100.0 + i, "w": 1, "count": float(i), "max": float(i), "m2": None,
             "zones": {"a": (1.0, 0.5)}} for i in range(10)]
    rows.append({"ts": 130.0, "w": 3, "count": 5.0, "max": 9.0, "m2": 1.5, "zones": {}})
    s = bucket(rows, 100.0, 140.0, 10.0)
    assert s["t"] == [100.0, 110.0, 120.0, 130.0]
    assert s["count"] == [4.5, None, None, 5.0] and s["count_max"] == [9.0, None, None, 9.0]
    assert s["density_m2"] == [None, None, None, 1.5]
    assert s["zones"]["a"]["count"] == [1.0, None, None, None] and s["frames"] == 13
    assert choose_step(86400, 1) == 44  # a day at most 2000 buckets
    assert choose_step(600, None) == 2


def cfg_with(zones: list, fps: float = 5, extra: dict | None = None):  # noqa: ANN001, ANN201
    return config_from_dict({"cameras": {"a": {"url": "/dev/video9", "fps": fps, "zones": zones},
                                         "b": "/dev/video8"}, **(extra or {})})


def test_live_changes_allow_zones_and_alerts_only() -> None:
    z = [{"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]]}]
    base = cfg_with([])
    assert live_changes(base, cfg_with([])).cameras == []
    ch = live_changes(base, cfg_with(z))
    assert ch.cameras == ["a"] and ch.refused is None
    with_alert = config_from_dict({"cameras": {"a": {"url": "/dev/video9", "fps": 5, "zones": z,
                                                     "alerts": [{"name": "x", "zone": "door",
                                                                 "threshold": 3}]},
                                               "b": "/dev/video8"}})
    assert live_changes(base, with_alert).cameras == ["a"]
    assert live_changes(base, cfg_with([], fps=6)).refused == "cameras.a.fps changed"
    assert live_changes(base, cfg_with([], extra={"serve": {"port": 9000}})).refused is None
    assert "section 'model'" in live_changes(
        base, cfg_with([], extra={"model": {"batch": 2}})).refused
    fewer = config_from_dict({"cameras": {"a": {"url": "/dev/video9", "fps": 5}}})
    assert live_changes(base, fewer).refused == "cameras removed 'b'"


def test_labels_file_writer(tmp_path: Path) -> None:
    cfg = config_from_dict({"run_dir": str(tmp_path), "cameras": {
        "../odd cam": {"url": "/dev/video9", "zones": [{"name": "z", "polygon": [[0, 0], [1, 0],
                                                                                [1, 1]]}]}}})
    cam = "../odd cam"
    folder = labels_dir(cfg, cam)
    assert folder.parent == tmp_path / "labels" and ".." not in folder.name
    ok, jpeg = cv2.imencode(".jpg", frame(48, 64))
    name = save_label_image(cfg, cam, jpeg.tobytes(), 7)
    assert (folder / name).is_file() and name.startswith("frame_00000007_")
    set_label(cfg, cam, {"image": name, "points": [[1, 2]]}, (64, 48))
    set_label(cfg, cam, {"image": name, "zone_counts": {"z": 2.5}}, (64, 48))
    doc = json.loads((folder / "labels.json").read_text())
    assert doc == {"camera": cam, "images": [{"image": name, "zone_counts": {"z": 2.5}}]}
    for bad, why in (({"image": name}, "exactly one"),
                     ({"image": name, "count": -1}, "count"),
                     ({"image": name, "count": 3, "points": []}, "exactly one"),
                     ({"image": "other.jpg", "count": 1}, "was not saved"),
                     ({"image": name, "points": [[64, 0]]}, "off the 64x48")):
        with pytest.raises(LabelError, match=why):
            set_label(cfg, cam, bad, (64, 48))
    for evil in ("../labels.json", "x.png", ".hidden.jpg", "a/b.jpg"):
        with pytest.raises(LabelError):
            image_path(cfg, cam, evil)


@pytest.fixture
def guarded_app(server: EmbeddedRedis) -> Iterator[str]:
    """The console app on a real uvicorn server (token set, loopback), reading the test Redis."""
    import uvicorn

    from pipeline.web.app import create_app
    from pipeline.web.source import DataSource

    app = create_app(DataSource.from_url(server.url, "guard"), token="tok-123", loopback=True,
                     max_body=1024, rate=20)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    assert wait(lambda: srv.started)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        t.join(10)


def test_guard_token_sizes_rates_and_read_only(guarded_app: str) -> None:
    url = f"{guarded_app}/api/v1/cameras/a/zones"
    assert http("PUT", url, {"zones": []})[0] == 401
    status, _, body = http("PUT", url, {"zones": []}, headers={"Authorization": "Bearer tok-123"})
    assert status == 409 and "--config" in json.loads(body)["detail"]  # --redis: read-only
    status, _, _ = http("PUT", url, raw=b"x" * 2000, headers={
        "Authorization": "Bearer tok-123", "Content-Type": "application/json"})
    assert status == 413
    statuses = [http("GET", f"{guarded_app}/api/v1/health")[0] for _ in range(120)]
    assert 429 in statuses and statuses[0] == 200
