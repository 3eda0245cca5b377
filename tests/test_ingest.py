"""Ingest end to end: real RTSP server, real files, real spawned ingest processes and rings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ingest_helpers import FAST_PROBE, IngestRun, fast_reconnect
from rtsp_server import RtspServer, free_port, make_clip

from pipeline.config import CameraConfig

pytestmark = pytest.mark.timeout(120)


def test_file_lossless_every_frame_in_order(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=40)
    with IngestRun() as run:
        cam = run.add("file", CameraConfig(url=str(clip)), slots=2)  # a tiny ring: put blocks
        run.wait_state("file", "finished", timeout=20)
        assert run.join("file", 10) == 0
        time.sleep(0.3)
    assert [m.frame_index for m in cam.metas] == list(range(40))
    pts = [m.pts for m in cam.metas]
    assert pts == sorted(pts) and pts[0] == pytest.approx(0.0) and pts[-1] == pytest.approx(39 / 25)
    assert all((m.height, m.width) == (240, 320) for m in cam.metas)
    assert all(m.camera == "file" for m in cam.metas)
    # the clip's blue channel ramps by 7 per frame: frames are distinct and in order
    assert np.all(np.diff(cam.means[:30]) > 0)
    # and every frame is byte for byte what PyAV's own BGR conversion gives
    import hashlib

    import av

    with av.open(str(clip)) as c:
        ref = [hashlib.blake2b(f.to_ndarray(format="bgr24").tobytes(), digest_size=16).hexdigest()
               for f in c.decode(video=0)]
    assert cam.digests == ref
    assert cam.end is not None and cam.end.reason == "finished"
    assert [s for s, _ in run.states("file")] == ["starting", "online", "finished"]


def test_rtsp_kill_reconnect_while_second_camera_keeps_flowing(
        tmp_path: Path, rtsp_server: RtspServer) -> None:
    clip = make_clip(tmp_path / "loop.mp4", frames=25)
    live_cfg = CameraConfig(url=rtsp_server.url(), options=FAST_PROBE,
                            reconnect=fast_reconnect())
    file_cfg = CameraConfig(url=str(clip), realtime=True, loop=True)
    with IngestRun() as run:
        live = run.add("live", live_cfg)
        other = run.add("other", file_cfg)
        run.wait_state("live", "online", timeout=15)
        run.wait_frames("live", 20, timeout=10)
        run.wait_frames("other", 20, timeout=10)

        t_kill = time.time()
        rtsp_server.kill()
        st = run.wait_state("live", "reconnecting", timeout=10, after=t_kill)
        assert "end of stream" in st.reason or "Error" in st.reason
        time.sleep(1.0)  # a few failed attempts against a closed port
        before = len(live.metas)
        last_index = live.metas[-1].frame_index

        rtsp_server.start()
        t_up = time.time()
        run.wait_state("live", "online", timeout=15, after=t_up)
        run.wait_frames("live", 20, timeout=10, after=t_up)
        t_end = time.time()

    resumed = live.metas[before:]
    assert resumed and resumed[0].frame_index > last_index  # one index sequence per camera
    idx = [m.frame_index for m in live.metas]
    assert idx == sorted(set(idx))
    # the file camera never paused while the live one was down and reconnecting
    assert other.max_gap(t_kill, t_end) < 0.5, other.max_gap(t_kill, t_end)
    n_other = len([r for r in other.recv_ts if t_kill <= r <= t_end])
    assert n_other >= 0.6 * 25 * (t_end - t_kill)
    states = [s for s, _ in run.states("other")]
    assert states[:2] == ["starting", "online"] and "reconnecting" not in states
    # a looped file keeps its time moving forward
    pts = [m.pts for m in other.metas]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    # each opening of a source is a new session (the motion gate recounts the whole frame)
    assert len({m.session for m in live.metas[:before]}) == 1 and live.metas[0].session
    assert resumed[0].session != live.metas[before - 1].session
    m = other.metas
    changed = [i for i in range(1, len(m)) if m[i].session != m[i - 1].session]
    assert changed and all(m[i].frame_index // 25 != m[i - 1].frame_index // 25 for i in changed)


def test_hung_server_detected_by_read_timeout(rtsp_server: RtspServer) -> None:
    cfg = CameraConfig(url=rtsp_server.url(), options=FAST_PROBE,
                       reconnect=fast_reconnect(stall_timeout_s=1.5))
    with IngestRun() as run:
        run.add("cam", cfg)
        run.wait_frames("cam", 10, timeout=15)
        t_stop = time.time()
        rtsp_server.pause()
        try:
            st = run.wait_state("cam", "reconnecting", timeout=10, after=t_stop)
        finally:
            rtsp_server.resume()
        # within stall_timeout_s + 1 s of the last data (it took twice the timeout before:
        # FFmpeg released a half-received frame when its read gave up, which looked alive)
        assert st.ts - t_stop <= 1.5 + 1.0, (st.ts - t_stop, st.reason)
        assert "no data for" in st.reason or "timeout" in st.reason, st.reason
        t_res = time.time()
        run.wait_state("cam", "online", timeout=15, after=t_res)


def test_bad_files_fail_alone_with_clear_reasons(tmp_path: Path) -> None:
    good = make_clip(tmp_path / "good.mp4", frames=30)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    data = make_clip(tmp_path / "full.mp4", frames=60).read_bytes()
    cut = tmp_path / "cut.mp4"  # moov atom at the end: a cut file has no index at all
    cut.write_bytes(data[: len(data) // 2])
    fast = _faststart(tmp_path / "full.mp4", tmp_path / "fast.mp4")
    fast_cut = tmp_path / "fast_cut.mp4"  # index first: the frames simply stop early
    fast_cut.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    with IngestRun() as run:
        run.add("good", CameraConfig(url=str(good)))
        bad = {"text": text, "cut": cut, "fast_cut": fast_cut,
               "missing": tmp_path / "nope.mp4"}
        recs = {k: run.add(k, CameraConfig(url=str(p))) for k, p in bad.items()}
        run.wait_state("good", "finished", timeout=30)
        reasons = {k: run.wait_state(k, "offline", timeout=30).reason for k in bad}
        for k in ["good", *bad]:
            assert run.join(k, 10) == 0, k  # an offline camera is not a crashed process
        time.sleep(0.3)
    assert [m.frame_index for m in run.received["good"].metas] == list(range(30))
    assert reasons["text"].startswith("not a video file") and str(text) in reasons["text"]
    assert reasons["cut"].startswith("not a video file") and str(cut) in reasons["cut"]
    assert reasons["fast_cut"].startswith("truncated file: frames stop at ")
    assert "of the 2.4 s the file declares" in reasons["fast_cut"]
    assert str(fast_cut) in reasons["fast_cut"]
    assert reasons["missing"] == f"file not found: {tmp_path / 'nope.mp4'}"
    assert 0 < len(recs["fast_cut"].metas) < 60  # what could be decoded was delivered
    for k in bad:
        assert recs[k].end is not None and recs[k].end.reason.startswith("offline: ")


def test_fps_sampling_by_pts_from_file_and_live(tmp_path: Path, rtsp_server: RtspServer) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=50)
    with IngestRun() as run:
        f = run.add("file", CameraConfig(url=str(clip), fps=5))
        live = run.add("live", CameraConfig(url=rtsp_server.url(), fps=10, options=FAST_PROBE,
                                            reconnect=fast_reconnect()))
        run.wait_state("file", "finished", timeout=20)
        run.wait_frames("live", 3, timeout=15)
        t0 = time.time()
        time.sleep(3.0)
        t1 = time.time()
    # 25 fps sampled to 5: every 5th decoded frame, frame_index still counts every decoded frame
    assert [m.frame_index for m in f.metas] == list(range(0, 50, 5))
    assert np.allclose(np.diff([m.pts for m in f.metas]), 0.2)
    n = len([r for r in live.recv_ts if t0 <= r <= t1])
    assert 10 * 3 * 0.7 <= n <= 10 * 3 * 1.3, n
    # 25 -> 10 fps keeps every 2nd or 3rd decoded frame
    assert set(np.diff([m.frame_index for m in live.metas])[1:]) <= {2, 3}


def test_unreachable_camera_goes_offline_after_max_attempts() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/cam.mp4"
    cfg = CameraConfig(url=url, reconnect=fast_reconnect(initial_s=0.05, max_attempts=3))
    with IngestRun() as run:
        rec = run.add("cam", cfg)
        st = run.wait_state("cam", "offline", timeout=15)
        assert run.join("cam", 5) == 0
        time.sleep(0.2)
    assert st.reason.startswith("gave up after 3 reconnect attempts")
    assert "Connection refused" in st.reason and url in st.reason
    assert [s for s, _ in run.states("cam")] == ["starting", "reconnecting", "offline"]
    assert rec.end is not None and "gave up" in rec.end.reason


def test_stop_is_prompt_while_a_lossless_ring_is_full(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=40)
    with IngestRun() as run:
        run.add("cam", CameraConfig(url=str(clip)), slots=2, consume=False)
        run.wait_state("cam", "online", timeout=20)
        time.sleep(0.5)  # the producer is now blocked on the full ring
        t = time.monotonic()
        run.stop.set()
        assert run.join("cam", 5) == 0
        assert time.monotonic() - t < 2.0
        st = run.wait_state("cam", "offline", timeout=2)
        assert st.reason == "stopped"
        assert run.rings["cam"].ended


def test_rtsp_first_frame_and_latency(rtsp_server: RtspServer) -> None:
    """Low probe sizes: the first frame arrives quickly; capture stamps are wall-clock."""
    cfg = CameraConfig(url=rtsp_server.url(), options=FAST_PROBE, reconnect=fast_reconnect())
    with IngestRun() as run:
        rec = run.add("cam", cfg)
        starting = run.wait_state("cam", "starting", timeout=15)
        online = run.wait_state("cam", "online", timeout=15)
        run.wait_frames("cam", 10, timeout=10)
    assert online.ts - starting.ts < 2.0, online.ts - starting.ts
    lat = np.array(rec.recv_ts[:10]) - np.array([m.capture_ts for m in rec.metas[:10]])
    assert np.all(lat >= 0) and np.all(lat < 1.0)


def _faststart(src: Path, dst: Path) -> Path:
    """Remux with the MP4 index (moov) at the front, as streaming-friendly files have it."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is None:
                continue
            p.stream = s
            o.mux(p)
    return dst


def test_disabled_camera_reports_offline_without_opening(tmp_path: Path) -> None:
    with IngestRun() as run:
        rec = run.add("off", CameraConfig(url=str(tmp_path / "never_opened.mp4"), enabled=False))
        st = run.wait_state("off", "offline", timeout=15)
        assert run.join("off", 5) == 0
        time.sleep(0.2)
    assert st.reason == "disabled in the config (enabled: false)"
    assert [s for s, _ in run.states("off")] == ["offline"]
    assert rec.end is not None and not rec.metas


def test_restarted_file_ingest_resumes_after_the_last_frame_written(tmp_path: Path) -> None:
    """A restarted ingest keeps indices monotonic and a lossless file counts each frame once."""
    import multiprocessing as mp
    import os
    import queue
    import threading

    from pipeline.ingest import run_ingest
    from pipeline.process import StopFlag
    from pipeline.shm import EndOfStream, FrameMeta, FrameRing

    clip = make_clip(tmp_path / "r.mp4", frames=20)
    ring = FrameRing.create(f"cstest_resume_{os.getpid()}", 4, 240, 320, "lossless")
    try:
        blank = np.zeros((240, 320, 3), np.uint8)
        for i in range(7):  # what the crashed process had already delivered
            assert ring.put(blank, FrameMeta("file", i, i / 25, time.time(), 240, 320), timeout=5)
            got = ring.get(timeout=5)
            assert not isinstance(got, EndOfStream) and got is not None
            ring.release(got[0])
        stop = StopFlag(mp.get_context("spawn"))
        t = threading.Thread(target=run_ingest, args=("file", CameraConfig(url=str(clip)), ring,
                                                      queue.Queue(), stop), daemon=True)
        t.start()
        indices = []
        while True:
            got = ring.get(timeout=20)
            assert got is not None, "ingest stalled"
            if isinstance(got, EndOfStream):
                break
            indices.append(got[1].frame_index)
            ring.release(got[0])
        t.join(10)
        assert indices == list(range(7, 20))
    finally:
        ring.close()
        ring.unlink()


def test_a_complete_file_whose_header_overcounts_is_finished(shared_data: Path) -> None:
    """concourse_720p.avi's header says 682 frames; it holds 341, all decodable: a complete file
    (once reported as truncated, marked offline, and the run exited 1)."""
    from engines.video import count_frames, probe_video

    clip = shared_data / "videos" / "concourse_720p.avi"
    assert count_frames(str(clip)) == 341
    assert probe_video(str(clip)).frames == 341
    with IngestRun() as run:
        rec = run.add("concourse", CameraConfig(url=str(clip)), max_hw=(720, 1280))
        st = run.wait_state("concourse", "finished", timeout=60)
        assert run.join("concourse", 10) == 0
    assert st.reason == "end of file after 341 frames"
    assert len(rec.metas) == 341 and rec.end is not None and rec.end.reason == "finished"
