"""The console's HTTP API against a real pipeline: ``crowdstream run --live`` on the demo clip (the
supervisor starts the embedded Redis; its URL comes from the run dir's server.json through
``CrowdClient.from_config``) and a real ``crowdstream serve`` process, over plain HTTP."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from console_helpers import LiveRun, Serve, get_json, http, site_config, sse_events

from pipeline.client import CrowdClient
from pipeline.redis_embedded import embedded_data_dir, find_running
from pipeline.schema import validate

pytestmark = pytest.mark.slow
SECRET = "hunter2-not-served"


class Site:
    def __init__(self, config: Path, run: LiveRun, serve: Serve, client: CrowdClient) -> None:
        self.config, self.run, self.serve, self.client = config, run, serve, client
        self.url = serve.url

    def api(self, path: str) -> str:
        return f"{self.url}api/v1{path}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console_api")
    config = site_config(tmp, {
        "mall": {},
        # never opened; its URL holds a password the console must never serve
        "vault": {"url": f"rtsp://admin:{SECRET}@10.0.0.9/stream1", "enabled": False},
    }, redis={"snapshot_every_s": 0.5, "rollup_every_s": 2})
    run = LiveRun(config, tmp / "run.log")
    serve = None
    try:
        client = run.wait_counting(["mall"])
        serve = Serve("--config", str(config), "--port", "0", log_path=tmp / "serve.log")
        yield Site(config, run, serve, client)
    finally:
        if serve is not None:
            serve.stop()
        run.stop()


def wait_for(pred: Any, timeout: float = 20.0, every: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None


def test_client_finds_the_run_from_the_run_dir(site: Site) -> None:
    from pipeline.config import load_config

    # the run's embedded server, found the way every reader finds it (its URL carries the password)
    assert site.client.url == find_running(embedded_data_dir(load_config(site.config)))
    health = get_json(site.api("/health"))
    assert health["status"] == "ok" and health["redis"]["connected"]
    assert health["writable"] is True and health["token_required"] is False
    spec = get_json(site.api("/openapi.json"))
    paths = spec["paths"]
    for p in ("/api/v1/cameras", "/api/v1/cameras/{camera}/snapshot.jpg",
              "/api/v1/cameras/{camera}/counts", "/api/v1/cameras/{camera}/zones",
              "/api/v1/cameras/{camera}/calibration", "/api/v1/events", "/api/v1/health"):
        assert p in paths, p


def test_cameras_state_and_latest(site: Site) -> None:
    cams = {c["name"]: c for c in get_json(site.api("/cameras"))}
    mall = cams["mall"]
    assert mall["state"] == "online" and mall["count"] > 0 and mall["source"] == "file"
    assert mall["engine_id"].startswith("onnx-")
    assert cams["vault"]["configured"] and "url" not in cams["vault"]
    latest = get_json(site.api("/cameras/mall/latest"))
    validate({k: latest[k] for k in latest if k not in (
        "status", "status_reason", "status_ts", "heatmap_key", "stream_id",
        "publish_dropped_total", "snapshot_frame_index")})
    assert latest["frame_size"] == [480, 640]


def test_snapshot_is_a_capped_jpeg_with_its_heatmap(site: Site) -> None:
    status, headers, data = http("GET", site.api("/cameras/mall/snapshot.jpg"))
    assert status == 200 and headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (480, 640, 3)  # 640 wide: at snapshot_max_width, not downscaled
    frame = int(headers["x-frame-index"])
    pic = site.client.snapshot("mall")
    assert pic is not None and 0 < site.client.redis.ttl(site.client.keys.snapshot("mall")) <= 60
    validate({**pic.meta, "frame_index": pic.frame_index})
    # the snapshot's frame has its heatmap: coloured RGBA and raw 16-bit
    status, headers, png = http("GET", site.api(f"/cameras/mall/heatmap.png?frame={frame}"))
    if status == 404:  # the snapshot was replaced between the two reads: take the new one
        frame = site.client.snapshot("mall").frame_index
        status, headers, png = http("GET", site.api(f"/cameras/mall/heatmap.png?frame={frame}"))
    assert status == 200 and headers["content-type"] == "image/png"
    rgba = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgba.ndim == 3 and rgba.shape[2] == 4 and rgba[..., 3].max() > 0
    status, _, raw = http("GET", site.api(f"/cameras/mall/heatmap.png?frame={frame}&style=raw"))
    assert status == 200
    assert cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    status, _, legend = http("GET", site.api("/cameras/mall/legend.png"))
    assert status == 200 and legend[:4] == b"\x89PNG"


def test_overlay_png_is_the_recorders_picture(site: Site) -> None:
    status, headers, data = http("GET", site.api("/cameras/mall/overlay.png"))
    assert status == 200 and headers["content-type"] == "image/png"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    # render_overlay: a header strip above the 640x480 scene
    assert img.shape[1] == 640 and img.shape[0] > 480


def test_counts_over_a_range_are_bucketed(site: Site) -> None:
    s = get_json(site.api("/cameras/mall/counts?minutes=2&step=5"))
    assert s["step_s"] == 5 and len(s["t"]) == len(s["count"]) == 24
    assert s["frames"] > 0
    filled = [c for c in s["count"] if c is not None]
    assert filled and all(c >= 0 for c in filled)
    assert all(m is None or m >= c for m, c in zip(s["count_max"], s["count"], strict=True)
               if c is not None)
    # the rollup stream: windows of rollup_every_s with the schema's fields
    # (the first window closes rollup_every_s after the first count: wait for it on a slow start)
    rolls = wait_for(lambda: site.client.rollups("mall", time.time() - 120), timeout=60)
    assert rolls, "no rollup window within 60 s"
    for _, r in rolls:
        validate(r)
        assert r["end_ts"] - r["start_ts"] == 2 and r["count_min"] <= r["count_mean"] <= r["count_max"]
    # a range longer than the counts stream reaches back is answered from the rollups
    day = get_json(site.api("/cameras/mall/counts?minutes=1440"))
    assert day["source"] == "rollup" and len(day["t"]) <= 2000 and day["frames"] > 0
    status, _, _ = http("GET", site.api("/cameras/mall/counts?start=10&end=5"))
    assert status == 422


def test_live_events_show_counts_changing(site: Site) -> None:
    events = sse_events(site.api("/events"), 6.0)
    assert events and events[0]["t"] == "hello" and "mall" in events[0]["cameras"]
    counts = [e for e in events if e["t"] == "count" and e["camera"] == "mall"]
    assert len(counts) >= 5, [e["t"] for e in events]
    assert len({e["frame_index"] for e in counts}) == len(counts)  # newest per read, no repeats
    assert len({round(e["count"], 3) for e in counts}) > 1
    assert any(e.get("snapshot") for e in counts)


def test_zone_saved_to_yaml_and_applied_by_the_running_pipeline(site: Site) -> None:
    before = site.config.read_text()
    zones = [{"name": "left half", "polygon": [[0, 0.2], [0.5, 0.2], [0.5, 1], [0, 1]]}]
    status, _, data = http("PUT", site.api("/cameras/mall/zones"), {"zones": zones})
    assert status == 200, data
    res = json.loads(data)
    assert res["saved"]["in_place"] and res["reload"]["applied"], res
    text = site.config.read_text()
    assert text.startswith("# console test site: this comment must survive every save")
    assert "# a camera" in text and len(text) > len(before)
    doc = yaml.safe_load(text)
    assert doc["cameras"]["mall"]["zones"][0]["name"] == "left half"
    # the running pipeline counts the new zone (no restart)
    got = wait_for(lambda: (site.client.latest("mall") or {}).get("zones", {}).get("left half"))
    assert got is not None and got["count"] >= 0
    assert get_json(site.api("/cameras/mall/zones"))["zones"][0]["name"] == "left half"
    assert "zones and alerts reloaded" in site.run.log()


def test_bad_zone_is_refused_with_the_config_error_line(site: Site) -> None:
    before = site.config.read_text()
    bowtie = [{"name": "x", "polygon": [[0, 0], [1, 1], [1, 0], [0, 1]]}]
    status, _, data = http("PUT", site.api("/cameras/mall/zones"), {"zones": bowtie})
    assert status == 422
    detail = json.loads(data)["detail"]
    assert str(site.config) in detail and "cameras.mall.zones" in detail and "cross" in detail
    assert site.config.read_text() == before
    dup = [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]]}] * 2
    status, _, data = http("PUT", site.api("/cameras/mall/zones"), {"zones": dup})
    assert status == 422 and "duplicate" in json.loads(data)["detail"]
    status, _, _ = http("PUT", site.api("/cameras/nope/zones"), {"zones": []})
    assert status == 404


def test_sighup_applies_alert_rules_and_refuses_other_changes(site: Site) -> None:
    text = site.config.read_text()
    rule = ('    alerts:\n      - {name: busy, zone: "left half", threshold: 0.0, min_duration_s: 0,'
            ' cooldown_s: 0}\n')
    site.config.write_text(text.replace("    zones:\n", rule + "    zones:\n", 1))
    assert not [e for _, e in site.client.recent_alerts(50, "mall") if e["rule"] == "busy"]
    os.kill(site.run.proc.pid, signal.SIGHUP)
    started = wait_for(lambda: [e for _, e in site.client.recent_alerts(50, "mall")
                                if e["rule"] == "busy"])
    assert started and started[0]["event"] == "start"
    active = get_json(site.api("/alerts/active"))
    assert any(a["rule"] == "busy" for a in active)
    assert any(a["rule"] == "busy" for a in get_json(site.api("/alerts?camera=mall")))
    # a change that needs a restart: refused, nothing applied, said so in the reply
    site.config.write_text(site.config.read_text().replace('fps: 5.0', 'fps: 4.0', 1))
    rid = site.client.request_reload("mall", origin="test")
    replies = site.client.control_replies(rid, 10.0)
    assert replies and not replies[0]["ok"] and "needs a restart" in replies[0]["message"]
    assert "cameras.mall.fps" in replies[0]["message"]
    validate(replies[0])
    site.config.write_text(site.config.read_text().replace('fps: 4.0', 'fps: 5.0', 1))


POINTS = [((100.0, 450.0), (0.0, 0.0)), ((540.0, 450.0), (4.0, 0.0)),
          ((420.0, 200.0), (4.0, 8.0)), ((220.0, 200.0), (0.0, 8.0))]


def five_points() -> list[dict[str, Any]]:
    """Four corners of a 4 x 8 m floor rectangle and its centre, projected exactly."""
    img = np.float32([p[0] for p in POINTS])
    gnd = np.float32([p[1] for p in POINTS])
    h = cv2.getPerspectiveTransform(gnd, img)
    c = h @ np.array([2.0, 4.0, 1.0])
    pts = [{"image": list(i), "ground": list(g)} for i, g in POINTS]
    return pts + [{"image": [float(c[0] / c[2]), float(c[1] / c[2])], "ground": [2.0, 4.0]}]


def test_calibration_fit_preview_and_store_as_the_cli(site: Site) -> None:
    pts = five_points()
    status, _, data = http("POST", site.api("/cameras/mall/calibration/fit"), {"points": pts})
    assert status == 200, data
    fit = json.loads(data)
    assert len(fit["errors_m"]) == 5 and fit["max_m"] < 0.01 and fit["image_size"] == [640, 480]
    status, headers, png = http("POST", site.api("/cameras/mall/calibration/preview"),
                                {"points": pts})
    assert status == 200 and png[:4] == b"\x89PNG"
    # refused like the command: 3 points, and one wrong point
    status, _, data = http("POST", site.api("/cameras/mall/calibration/fit"),
                           {"points": pts[:3]})
    assert status == 422 and json.loads(data)["detail"]["reason"] == "too_few_points"
    bad = [dict(p) for p in pts]
    bad[4] = {"image": bad[4]["image"], "ground": [2.0, 6.0]}
    status, _, data = http("PUT", site.api("/cameras/mall/calibration"), {"points": bad})
    detail = json.loads(data)["detail"]
    assert status == 422 and detail["reason"] == "reprojection_error" and len(detail["errors_m"]) == 5
    assert "calibration" not in yaml.safe_load(site.config.read_text())["cameras"]["mall"]
    status, _, data = http("PUT", site.api("/cameras/mall/calibration"), {"points": pts})
    assert status == 200, data
    res = json.loads(data)
    cal = yaml.safe_load(site.config.read_text())["cameras"]["mall"]["calibration"]
    assert len(cal["points"]) == 5 and cal["image_size"] == [640, 480] and cal["homography"]
    assert "crowdstream calibrate ground" in site.config.read_text()  # the command's comment
    # the run does not change its calibration live: the reply says it needs a restart
    assert res["reload"]["requested"] and "needs a restart" in res["reload"]["message"]
    assert get_json(site.api("/cameras/mall/calibration"))["calibration"]["image_size"] == [640, 480]


def test_labels_file_in_the_fixed_format(site: Site) -> None:
    from pipeline.config import load_config
    from pipeline.labels import labels_dir

    status, _, data = http("POST", site.api("/cameras/mall/labels/frames"), {})
    assert status == 200, data
    saved = json.loads(data)
    assert (saved["width"], saved["height"]) == (640, 480)
    folder = labels_dir(load_config(site.config), "mall")
    assert folder == Path(load_config(site.config).run_dir) / "labels" / "mall"
    img = cv2.imread(str(folder / saved["image"]))
    assert img.shape == (480, 640, 3)  # the frame as decoded, full resolution
    name = saved["image"]
    pts = [[10.5, 20.0], [300.0, 200.25]]
    status, _, data = http("PUT", site.api(f"/cameras/mall/labels/{name}"), {"points": pts})
    assert status == 200, data
    doc = json.loads((folder / "labels.json").read_text())
    assert doc == {"camera": "mall", "images": [{"image": name, "points": pts}]}
    # replaced by a count; per-zone counts must name the camera's zones; points stay on the image
    http("PUT", site.api(f"/cameras/mall/labels/{name}"), {"count": 31})
    assert json.loads((folder / "labels.json").read_text())["images"] == [{"image": name,
                                                                          "count": 31}]
    status, _, data = http("PUT", site.api(f"/cameras/mall/labels/{name}"),
                           {"zone_counts": {"nowhere": 3}})
    assert status == 422 and "not a zone" in json.loads(data)["detail"]
    status, _, _ = http("PUT", site.api(f"/cameras/mall/labels/{name}"),
                        {"zone_counts": {"left half": 12}})
    assert status == 200
    status, _, data = http("PUT", site.api(f"/cameras/mall/labels/{name}"),
                           {"points": [[700, 10]]})
    assert status == 422 and "off the 640x480 image" in json.loads(data)["detail"]
    status, _, _ = http("PUT", site.api("/cameras/mall/labels/..%2Fx.jpg"), {"count": 1})
    assert status in (404, 405, 422)  # never a file outside the labels folder
    assert get_json(site.api("/cameras/mall/labels"))["images"][0]["zone_counts"] == {
        "left half": 12}


def test_writes_need_json_from_this_origin_and_bounded_bodies(site: Site) -> None:
    url = site.api("/cameras/mall/zones")
    status, _, _ = http("PUT", url, raw=b'{"zones": []}', headers={"Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = http("PUT", url, {"zones": []}, headers={"Origin": "http://evil.example"})
    assert status == 403
    status, _, _ = http("GET", site.api("/health"), headers={"Host": "evil.example"})
    assert status == 421  # DNS rebinding: loopback console, foreign host name
    big = b'{"zones": [' + b" " * 300_000 + b"]}"  # over serve.max_body_kb (256 KiB)
    status, _, _ = http("PUT", url, raw=big, headers={"Content-Type": "application/json"})
    assert status == 413
    status, headers, _ = http("GET", site.url)
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]


def test_no_secret_is_ever_served(site: Site) -> None:
    bodies = [http("GET", site.api(p))[2] for p in (
        "/health", "/cameras", "/cameras/vault", "/cameras/mall", "/cameras/vault/zones",
        "/cameras/vault/calibration", "/cameras/vault/alert-rules", "/alerts")]
    bodies += [json.dumps(sse_events(site.api("/events"), 1.5)).encode()]
    for b in bodies:
        assert SECRET.encode() not in b
        assert b"rtsp://" not in b


def test_token_guards_writes_and_other_addresses(site: Site, tmp_path: Path) -> None:
    import subprocess

    from console_helpers import cli_cmd

    refused = subprocess.run(cli_cmd("serve", "--config", str(site.config), "--host", "0.0.0.0",
                                     "--port", "0"), capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parent.parent,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert refused.returncode == 2 and "token_env" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    guarded = Serve("--config", str(site.config), "--host", "0.0.0.0", "--port", "0",
                    "--token-env", "CS_TEST_TOKEN", env={"CS_TEST_TOKEN": "t0ken-abc"})
    try:
        url = guarded.url + "api/v1/cameras/mall/zones"
        zones = get_json(url)["zones"]
        status, headers, _ = http("PUT", url, {"zones": zones})
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        status, _, _ = http("PUT", url, {"zones": zones},
                            headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, data = http("PUT", url, {"zones": zones},
                               headers={"Authorization": "Bearer t0ken-abc"})
        assert status == 200, data
        assert get_json(guarded.url + "api/v1/health")["token_required"] is True
    finally:
        guarded.stop()
