"""Recording: segments decode with PyAV (H.264, yuv420p, faststart), the overlay drawn by
``pipeline.overlay`` around the scene or a clean recording of the frames, safe file names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _outputs_helpers import make_result

from engines.paths import safe_name
from pipeline.config import config_from_dict
from pipeline.sinks.recorder import SegmentWriter

av = pytest.importorskip("av")


@pytest.mark.parametrize("camera", ["../x", "../../etc/passwd", "lobby 1", ".", "..", "a/b\\c",
                                    "", "ok-name_1.2"])
def test_safe_names_stay_inside_the_directory(camera: str, tmp_path: Path) -> None:
    name = safe_name(camera)
    assert name and "/" not in name and "\\" not in name and " " not in name
    assert not name.startswith(".")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    if camera == "ok-name_1.2":
        assert name == camera
    else:
        assert name != camera
    assert safe_name("a b") != safe_name("a_b")  # changed ids get a hash: no collisions


def _decode(path: Path) -> tuple[int, tuple[int, int], str, str]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, (s.height, s.width), s.codec_context.name, s.codec_context.pix_fmt


class RecorderProcess:
    """The recorder child as the supervisor starts it: rings under a run prefix, ``spawn_child``."""

    def __init__(self, cfg, sizes: dict[str, tuple[int, int]], block: int = 8) -> None:
        import multiprocessing as mp

        from pipeline.process import ChildSpec, StopFlag, spawn_child
        from pipeline.shm import RunSegments
        from pipeline.sinks.recorder import RECORDER_TARGET, RecorderArgs, recorder_rings

        ctx = mp.get_context("spawn")
        self.segments = RunSegments()
        self.rings = recorder_rings(self.segments, cfg, sizes, block)
        self.handles = {c: r.handle() for c, r in self.rings.items()}
        self.stop = StopFlag(ctx)
        self.proc = spawn_child(ctx, ChildSpec("recorder", RECORDER_TARGET, self.stop),
                                RecorderArgs(cfg, self.handles, self.stop))

    def finish(self, timeout: float = 60.0) -> int | None:
        self.stop.set()
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
        assert self.segments.unlink_all() == []
        return self.proc.exitcode


def test_recording_process_writes_h264_segments(tmp_path: Path) -> None:
    from pipeline.alerts import AlertSink
    from pipeline.sinks.recorder import RecordingSink
    from pipeline.zones import ZoneSink

    cam_id = "../evil cam"
    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "cameras": {cam_id: {
        "url": "x.mp4",
        "zones": [{"name": "door", "polygon": [[0.1, 0.1], [0.6, 0.1], [0.6, 0.8], [0.1, 0.8]]}],
        "alerts": [{"name": "busy", "zone": "door", "threshold": 1.0, "cooldown_s": 0}],
        "recording": {"enabled": True, "segment_s": 1.0, "queue_slots": 64}}}})
    zones = ZoneSink(cfg.cameras)
    alerts = AlertSink(cfg.cameras)
    recorder = RecorderProcess(cfg, {cam_id: (144, 256)})
    rec = RecordingSink(cfg.cameras, rings=recorder.handles, active_alerts=alerts.active)
    rec.open()
    n = 45  # 1.5 s at 30 fps -> segments of 30 and 15 frames
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = rng.integers(0, 255, (144, 256, 3), dtype=np.uint8)
        r = make_result(cam_id, i, shape=(18, 32), cell=8.0, frame=frame)
        zones.write(r)
        alerts.write(r)
        rec.write(r)
    assert alerts.active(cam_id), "the overlay should show an active alert"
    rec.close()
    assert recorder.finish() == 0
    assert rec.sent == n and rec.skipped == 0
    base = (tmp_path / "run" / "recordings").resolve()
    files = sorted(base.rglob("*.mp4"))
    assert len(files) == 2 and not list(base.rglob("*.part"))
    for f in files:
        assert f.resolve().is_relative_to(base) and " " not in f.name and ".." not in f.name
        assert f.parent.name == safe_name(cam_id)
        head = f.read_bytes()[:4096]
        assert 0 <= head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head  # faststart
    decoded = [_decode(f) for f in files]
    assert [d[0] for d in decoded] == [30, 15]
    # the overlay's header strip above the scene and one alert strip below it: taller than
    # the camera's 144 rows, the same size in every segment
    (size,) = {d[1] for d in decoded}
    assert size[0] > 144 and size[1] == 256
    assert all(d[2:] == ("h264", "yuv420p") for d in decoded)


def test_retention_by_size_keeps_the_newest(tmp_path: Path) -> None:
    cfg = config_from_dict({"cameras": {"c": {"url": "x", "recording": {
        "enabled": True, "segment_s": 0.2, "retain_gb": 40e3 / 1024 ** 3}}}}).cameras["c"].recording
    w = SegmentWriter("c", cfg, tmp_path)
    rng = np.random.default_rng(1)
    for i in range(30):
        w.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), i / 30, 1e9 + i / 30, i)
    w.close_segment()
    left = sorted((tmp_path / "c").glob("*.mp4"))
    assert len(w.segments) == 5 and 1 <= len(left) < 5
    assert left == w.segments[-len(left):]  # the oldest went first
    assert sum(f.stat().st_size for f in left) <= 40e3


def test_a_busy_recorder_skips_frames_and_counts_them(tmp_path: Path) -> None:
    """Every recorder slot taken (the encoder is behind): frames are skipped and counted, never
    waited for, and the overlay data that travels beside each frame comes out intact."""
    import pickle

    from pipeline.shm import RunSegments
    from pipeline.sinks.recorder import RecordingSink, recorder_rings

    cfg = config_from_dict({"run_dir": str(tmp_path), "cameras": {"c": {
        "url": "x", "recording": {"enabled": True, "queue_slots": 3}}}})
    segs = RunSegments()
    rings = recorder_rings(segs, cfg, {"c": (64, 96)}, block=8)
    try:
        sink = RecordingSink(cfg.cameras, rings={"c": rings["c"].handle()})
        sink.open()
        frame = np.full((64, 96, 3), 7, np.uint8)
        for i in range(5):
            sink.write(make_result("c", i, shape=(8, 12), frame=frame))
        assert (sink.sent, sink.skipped) == (3, 2)
        slot, meta, view = rings["c"].get(timeout=0)
        blob = pickle.loads(rings["c"].aux(slot))
        assert meta.frame_index == 0 and (view == 7).all()
        assert blob["frame_index"] == 0 and blob["density"].shape == (8, 12)
        rings["c"].release(slot)
        sink.close()
    finally:
        assert segs.unlink_all() == []


def _frames(path_dir: Path) -> list[np.ndarray]:
    out = []
    for f in sorted(path_dir.glob("*.mp4")):
        with av.open(str(f)) as c:
            out += [fr.to_ndarray(format="bgr24") for fr in c.decode(video=0)]
    return out


def _scene(i: int, h: int = 144, w: int = 256) -> np.ndarray:
    """A smooth moving picture (codec noise stays small on it)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 128 + 100 * np.sin((xx + 3 * i) / 23.0)
    img[..., 1] = 128 + 100 * np.cos((yy - 2 * i) / 17.0)
    img[..., 2] = 90 + (xx + yy) / 5
    return img


def test_overlay_and_clean_recordings(tmp_path: Path) -> None:
    """The recorder process draws with pipeline.overlay: frames are taller than the scene by the
    header strip and one strip per alert rule, and the heatmap marks the crowd on the scene; a
    ``recording.overlay: false`` camera is recorded as it is: the same size as the source and
    the same pixels within codec noise."""
    from pipeline.alerts import AlertSink
    from pipeline.sinks.recorder import RecordingSink
    from pipeline.zones import ZoneSink

    common = {"url": "x.mp4", "zones": [{"name": "door", "polygon": [[0.1, 0.1], [0.6, 0.1],
                                                                     [0.6, 0.8], [0.1, 0.8]]}],
              "alerts": [{"name": "busy", "zone": "door", "threshold": 1.0, "cooldown_s": 0},
                         {"name": "full", "threshold": 1000.0}]}
    rec_cfg = {"enabled": True, "segment_s": 10.0, "queue_slots": 64, "crf": 12}
    cfg = config_from_dict({"run_dir": str(tmp_path / "run"), "cameras": {
        "drawn": {**common, "recording": rec_cfg},
        "clean": {**common, "recording": {**rec_cfg, "overlay": False}}}})
    zones, alerts = ZoneSink(cfg.cameras), AlertSink(cfg.cameras)
    recorder = RecorderProcess(cfg, {"drawn": (144, 256), "clean": (144, 256)})
    rec = RecordingSink(cfg.cameras, rings=recorder.handles, active_alerts=alerts.active)
    rec.open()
    n = 20
    for i in range(n):
        for cam in ("drawn", "clean"):
            r = make_result(cam, i, count=40.0, shape=(18, 32), cell=8, frame=_scene(i))
            r.density.map[:] = 0
            r.density.map[4:12, 4:14] = 0.5  # a crowd inside the door zone: drawn red
            zones.write(r)
            alerts.write(r)
            rec.write(r)
    rec.close()
    assert recorder.finish() == 0 and rec.skipped == 0
    base = tmp_path / "run" / "recordings"
    drawn, clean = _frames(base / "drawn"), _frames(base / "clean")
    assert len(drawn) == len(clean) == n
    # clean: the source pictures, within codec noise (yuv420p halves the chroma resolution)
    for i, img in enumerate(clean):
        assert img.shape == (144, 256, 3)
        assert np.abs(img.astype(int) - _scene(i)).mean() < 3.0
    # drawn: a header strip above the scene and two alert strips (one per rule) below it
    h = drawn[0].shape[0]
    assert h > 144 + 30 and all(d.shape == (h, 256, 3) for d in drawn)
    strip = (h - 144) // 3
    top = drawn[5][:strip - 2]
    assert top.mean() < 60 and (top > 200).any()  # black header with white text
    scene = drawn[5][strip:strip + 144].astype(int)
    crowd = np.abs(scene[40:90, 40:100] - _scene(5)[40:90, 40:100]).mean()
    empty = np.abs(scene[122:142, 5:100] - _scene(5)[122:142, 5:100]).mean()  # no zone, legend
    if os.environ.get("CROWDSTREAM_KEEP_PNG"):  # to look at it
        import cv2

        cv2.imwrite(os.environ["CROWDSTREAM_KEEP_PNG"], drawn[5])
    assert crowd > 15 and empty < 4, (crowd, empty)  # the heatmap marks the crowd only
    alert_row = drawn[5][strip + 144:strip + 144 + strip - 2]
    assert alert_row[..., 2].mean() > 100  # the active alert's (warning) banner


def test_a_calibrated_camera_is_coloured_in_people_per_m2() -> None:
    """With a ground calibration the recorder's overlay colours people per m^2 (the cell areas
    from calibrate.ground) on the heatmap_max_m2 scale."""
    from pipeline.sinks.recorder import _Recorder

    cfg = config_from_dict({"cameras": {"c": {"url": "x", "recording": {
        "enabled": True, "heatmap_max_m2": 3.0}, "calibration": {
        "image_size": [256, 144], "points": [
            {"image": [20, 140], "ground": [0, 0]}, {"image": [236, 140], "ground": [8, 0]},
            {"image": [200, 40], "ground": [8, 12]}, {"image": [56, 40], "ground": [0, 12]}]}}}})
    r = make_result("c", 0, shape=(18, 32), cell=8, frame=_scene(0))
    meta = {"capture_ts": 0.0, "count": r.count, "density": r.density.map, "cell_pixels": 8.0,
            "zone_counts": {}, "zone_density_m2": {}, "alerts": [], "density_m2": 0.4}
    rec = _Recorder(cfg)
    per_m2 = rec._density_m2("c", (144, 256), meta)
    from calibrate.ground import GroundCalibration

    cal = GroundCalibration.from_config(cfg.cameras["c"].calibration, frame_size=(144, 256))
    assert np.allclose(per_m2, cal.density_m2(r.density.map, 8.0))
    from pipeline.sinks.recorder import overlay_view

    values, vmax, unit = overlay_view("c", cfg.cameras["c"], meta, per_m2).heat_scale()
    assert unit == "p/m2" and vmax == 3.0 and values is per_m2
    assert rec.picture("c", _scene(0), meta).shape[0] > 144
