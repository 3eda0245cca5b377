"""Overlay recording: segments decode with PyAV (H.264, yuv420p, faststart), safe file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _outputs_helpers import make_result

from pipeline.config import config_from_dict
from pipeline.sinks.recorder import SegmentWriter, draw_overlay, safe_name

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
    assert all(d[1:] == ((144, 256), "h264", "yuv420p") for d in decoded)


def test_overlay_draws_heatmap_and_text() -> None:
    frame = np.full((120, 160, 3), 40, np.uint8)
    dens = np.zeros((15, 20), np.float32)
    dens[5:10, 5:10] = 1.0
    cfg = config_from_dict({"cameras": {"c": {"url": "x", "zones": [
        {"name": "z", "polygon": [[0, 0.5], [1, 0.5], [1, 1]]}]}}})
    out = draw_overlay(frame.copy(), dens, 25.0, "c", 0.0, cfg.cameras["c"].zones, {"z": 3.0},
                       {}, [{"rule": "r", "zone": "z", "severity": "warning", "metric": "count",
                             "value": 3.0}], 0.5, 1.0)
    assert np.abs(out[60, 60].astype(int) - 40).sum() > 30  # coloured where dense
    assert (out[100:, :, 2] > 150).any()  # the red alert banner
    assert (out[:10, 5:100] == 0).any()  # the header bar


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
