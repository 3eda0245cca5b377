"""Source opening options, PTS sampling and pacing, and an HLS-over-HTTP source end to end."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_helpers import IngestRun, fast_reconnect
from rtsp_server import make_clip

from engines.video import (
    DecodeStats,
    FpsSampler,
    Pacer,
    SourceError,
    is_live,
    iter_video_frames,
    open_source,
    open_spec,
    source_kind,
)
from pipeline.config import CameraConfig, ReconnectConfig

SOURCES = [  # url, kind, live, the queue policy it gets by default
    ("rtsp://10.0.0.5/stream1", "rtsp", True, "latest"),
    ("RTSP://cam/1", "rtsp", True, "latest"),  # schemes are case-insensitive
    ("rtsps://cam/1", "rtsp", True, "latest"),
    ("RTSPS://cam/1", "rtsp", True, "latest"),
    ("rtmp://live/app/key", "rtmp", True, "latest"),
    ("rtmps://live/app/key", "rtmp", True, "latest"),
    ("http://cdn/x/index.m3u8", "http", True, "latest"),
    ("HTTPS://cdn/x/index.m3u8", "http", True, "latest"),
    ("udp://239.0.0.1:1234", "stream", True, "latest"),
    ("srt://host:9000", "stream", True, "latest"),
    ("tcp://host:9000", "stream", True, "latest"),
    ("/dev/video0", "v4l2", True, "latest"),
    ("/dev/video12", "v4l2", True, "latest"),
    ("/videos/a.mp4", "file", False, "lossless"),
    ("clips/a.mp4", "file", False, "lossless"),  # relative: resolved against the config
    ("a.mp4", "file", False, "lossless"),
    ("file:///videos/a.mp4", "file", False, "lossless"),
    ("C:/videos/a.mp4", "file", False, "lossless"),
]


@pytest.mark.parametrize(("url", "kind", "live", "policy"), SOURCES)
def test_one_classifier_decides_kind_liveness_and_queue_policy(url: str, kind: str, live: bool,
                                                                policy: str) -> None:
    """One answer to "is this live?" everywhere: ingest (``source_kind``), the config's policy
    and the supervisor's planning all ask ``engines.video``. (``RTSP://cam/1`` was live for
    ingest but got the file queue policy before.)"""
    assert source_kind(url) == kind
    assert is_live(url) is live
    cam = CameraConfig(url=url)
    assert cam.is_live is live and cam.effective_policy == policy
    # a file paced like a camera gets the live policy; an explicit policy always wins
    assert CameraConfig(url=url, realtime=True).effective_policy == "latest"
    assert CameraConfig(url=url, queue_policy="lossless").effective_policy == "lossless"


def test_open_spec_live_options() -> None:
    rc = ReconnectConfig(stall_timeout_s=3.0, open_timeout_s=4.0)
    tcp = open_spec(CameraConfig(url="rtsp://cam/1", reconnect=rc))
    assert tcp.options["rtsp_transport"] == "tcp"
    assert tcp.options["timeout"] == "3000000"  # microseconds: a hung server raises
    assert tcp.options["analyzeduration"] == "0" and tcp.options["probesize"] == "32768"
    assert tcp.options["fflags"] == "+genpts+discardcorrupt"
    assert tcp.timeout == (4.0, 3.0) and tcp.format is None and tcp.live
    udp = open_spec(CameraConfig(url="rtsp://cam/1", rtsp_transport="udp"))
    assert udp.options["rtsp_transport"] == "udp"
    hls = open_spec(CameraConfig(url="http://h/index.m3u8", reconnect=rc))
    assert hls.options["rw_timeout"] == "3000000" and "rtsp_transport" not in hls.options
    assert open_spec(CameraConfig(url="rtmp://x/app/k")).options["rw_timeout"] == "10000000"
    v4l = open_spec(CameraConfig(url="/dev/video2", options={"video_size": "1280x720"}))
    assert v4l.format == "v4l2" and v4l.url == "/dev/video2"
    assert v4l.options["video_size"] == "1280x720"


def test_open_spec_files_and_overrides() -> None:
    f = open_spec(CameraConfig(url="a.mp4"))
    assert not f.live and f.timeout is None
    assert "probesize" not in f.options and "analyzeduration" not in f.options  # files probe fully
    o = open_spec(CameraConfig(url="rtsp://c/1", options={"probesize": "5000000", "format": "rtsp"}))
    assert o.options["probesize"] == "5000000" and o.format == "rtsp"
    assert "format" not in o.options


def test_open_source_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="file not found: .*nope.mp4") as e:
        open_source(CameraConfig(url=str(tmp_path / "nope.mp4")))
    assert not e.value.retry
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"not a video file \(empty, 0 bytes\)"):
        open_source(CameraConfig(url=str(empty)))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(SourceError, match="not a video file .*junk.mp4"):
        open_source(CameraConfig(url=str(junk)))
    with pytest.raises(SourceError, match="expected a video file, got a directory"):
        open_source(CameraConfig(url=str(tmp_path)))
    with pytest.raises(SourceError, match="cannot open /dev/video97") as e:
        open_source(CameraConfig(url="/dev/video97"))
    assert e.value.retry  # a camera that is unplugged may come back


def test_open_source_threads_and_decode(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=12)
    c = open_source(CameraConfig(url=str(clip), decode_threads=2))
    try:
        st = c.streams.video[0]
        assert st.thread_type.name == "AUTO" and st.thread_count == 2
        stats = DecodeStats()
        frames = list(iter_video_frames(c, stall_timeout_s=None, stats=stats))
    finally:
        c.close()
    assert len(frames) == 12 and stats.frames == 12 and stats.decode_errors == 0


def test_fps_sampler_by_pts() -> None:
    s = FpsSampler(5.0)
    t25 = [i / 25 for i in range(100)]
    kept = [t for t in t25 if s.keep(t)]
    assert len(kept) == 20 and kept[:3] == [0.0, 0.2, 0.4]
    s = FpsSampler(10.0)  # 25 -> 10 fps: alternately every 2nd and 3rd frame, 10 per second
    assert sum(s.keep(t) for t in t25) == 40
    s = FpsSampler(2.0)
    assert s.keep(100.0) and not s.keep(100.1) and s.keep(100.5)
    assert s.keep(3.0)  # PTS jumped back (camera restarted): the schedule starts over
    assert not s.keep(3.1)
    s = FpsSampler(None)
    assert all(s.keep(t) for t in t25)
    with pytest.raises(ValueError, match="fps must be > 0"):
        FpsSampler(0)


def test_pacer_holds_frames_to_their_pts() -> None:
    p = Pacer(max_lag_s=0.5)
    assert p.delay(10.0) == 0.0  # anchors
    d = p.delay(10.3)
    assert 0.25 < d <= 0.3
    time.sleep(0.9)
    assert p.delay(10.31) == 0.0  # far behind: re-anchor instead of bursting
    assert 0.0 < p.delay(10.35) <= 0.04


@pytest.fixture
def hls_server(tmp_path: Path) -> Iterator[str]:
    """A VOD HLS playlist of a generated clip served over plain HTTP on 127.0.0.1."""
    import av

    src = make_clip(tmp_path / "src.mp4", frames=50)
    out = tmp_path / "hls"
    out.mkdir()
    with av.open(str(src)) as i, av.open(str(out / "index.m3u8"), "w", format="hls",
                                         options={"hls_time": "1",
                                                  "hls_playlist_type": "vod"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is None:
                continue
            p.stream = s
            o.mux(p)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Quiet, directory=str(out)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/index.m3u8"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.timeout(60)
def test_hls_over_http_frames_flow(hls_server: str) -> None:
    # a VOD playlist is read as fast as it downloads: lossless, so no frame is dropped here
    cfg = CameraConfig(url=hls_server, queue_policy="lossless",
                       reconnect=fast_reconnect(initial_s=5.0, cap_s=5.0))
    with IngestRun() as run:
        rec = run.add("hls", cfg)
        run.wait_state("hls", "online", timeout=20)
        # a live source that ends is a drop, even when the playlist was a finite one
        st = run.wait_state("hls", "reconnecting", timeout=20)
        time.sleep(0.2)
    assert "end of stream" in st.reason
    assert [m.frame_index for m in rec.metas] == list(range(50))
    assert rec.metas[-1].pts == pytest.approx(49 / 25, abs=0.05)


def _video_then_audio_only_ts(path: Path, video_s: float = 1.0, audio_s: float = 10.0) -> Path:
    """MPEG-TS whose video stops after ``video_s`` while its audio goes on to ``audio_s``."""
    import fractions

    import av
    import numpy as np

    n_video, spf = int(25 * video_s), 1152
    with av.open(str(path), "w", format="mpegts") as o:
        v = o.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 320, 240, "yuv420p"
        v.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "25"}
        a = o.add_stream("mp2", rate=48000)
        a.layout, a.bit_rate = "mono", 64000
        vi = 0
        for k in range(int(audio_s * 48000 / spf)):
            tone = (np.sin(np.arange(spf) / 10) * 3000).astype(np.int16)[None]
            af = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            af.sample_rate, af.pts = 48000, k * spf
            for p in a.encode(af):
                o.mux(p)
            while vi < n_video and vi / 25 <= k * spf / 48000:
                vf = av.VideoFrame.from_ndarray(np.full((240, 320, 3), vi * 9 % 255, np.uint8),
                                                format="rgb24")
                vf.pts, vf.time_base = vi, fractions.Fraction(1, 25)
                for p in v.encode(vf):
                    o.mux(p)
                vi += 1
                if vi == n_video:
                    for p in v.encode():
                        o.mux(p)
        for p in a.encode():
            o.mux(p)
    return path


@pytest.mark.timeout(60)
def test_stall_watchdog_when_only_audio_keeps_flowing(tmp_path: Path) -> None:
    """Bytes keep arriving (so no read timeout) but no video frame: the watchdog reconnects."""
    data = _video_then_audio_only_ts(tmp_path / "va.ts").read_bytes()
    rate = len(data) / 10.0  # bytes per second: the 10 s stream takes 10 s, like a live one

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            chunk = 188 * 8
            try:
                for i in range(0, len(data), chunk):
                    self.wfile.write(data[i:i + chunk])
                    self.wfile.flush()
                    time.sleep(chunk / rate)
            except OSError:
                pass  # the client went away

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/live.ts"
    cfg = CameraConfig(url=url, options={"probesize": "4096"},
                       reconnect=fast_reconnect(stall_timeout_s=1.5, initial_s=5.0, cap_s=5.0))
    try:
        with IngestRun() as run:
            rec = run.add("cam", cfg)
            online = run.wait_state("cam", "online", timeout=20)
            st = run.wait_state("cam", "reconnecting", timeout=20)
    finally:
        srv.shutdown()
        srv.server_close()
    assert st.reason.startswith("stalled: no frame decoded for 1.5 s"), st.reason
    # the decoder's frame threads still hold the last few frames when the video stops
    assert 15 <= len(rec.metas) <= 25
    # video ends ~1 s into the stream; then 1.5 s without a frame (plus the paced reading)
    assert 1.5 < st.ts - online.ts < 6.0


def test_passwords_never_reach_reasons() -> None:
    from rtsp_server import free_port

    from engines.redact import redact_url

    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/1") == "rtsp://admin:***@10.0.0.5:554/1"
    assert redact_url("rtsp://10.0.0.5/a:b@c") == "rtsp://10.0.0.5/a:b@c"  # no credentials
    assert redact_url("clip.mp4") == "clip.mp4"
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/cam"
    with pytest.raises(SourceError) as e:
        open_source(CameraConfig(url=url, reconnect=fast_reconnect()))
    assert "s3cret" not in str(e.value) and "admin:***@127.0.0.1" in str(e.value)
    assert e.value.retry


def test_ingest_imports_no_torch_or_cuda() -> None:
    """Decode processes stay small: importing ingest must not pull in torch (or CUDA)."""
    import subprocess
    import sys

    code = ("import sys, pipeline.ingest, engines.video, pipeline.frame_convert; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'cv2') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
