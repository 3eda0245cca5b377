"""End to end through real processes: ingest -> shm rings -> tile -> inference (tiny random-init
torch engine) -> post -> JSON-lines sink. Small generated clips keep it fast."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from proc_helpers import process_tree

REPO = Path(__file__).resolve().parent.parent


def make_clip(path: Path, n: int, w: int = 160, h: int = 120, fps: int = 25) -> Path:
    """A small MPEG-4 clip whose frames differ (a moving bar), written with PyAV."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 1] = (i * 8) % 255
            y = (i * 3) % (h - 10)
            img[y:y + 10, :, 2] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_config(tmp: Path, cameras: dict[str, Any], **extra: Any) -> Path:
    """A run config with the tiny torch model, no Redis, no metrics port, JSON lines output."""
    doc: dict[str, Any] = {
        "run_dir": str(tmp / "run"),
        "jsonl": "counts.jsonl",
        "model": {"random_init": "ebc-tiny-rn", "backend": "torch", "batch": 4},
        "metrics": {"port": None, "status_every_s": 0.5},
        "redis": {"enabled": False},
        "runtime": {"torch_threads": 1, "frame_slots": 4, "drain_timeout_s": 10},
        "cameras": cameras,
    }
    for k, v in extra.items():
        doc[k] = {**doc.get(k, {}), **v} if isinstance(v, dict) else v
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    counts, status = [], []
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        (counts if doc["type"] == "count" else status).append(doc)
    return counts, status


def cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def leftover_segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"cs_{pid}_")]


def shm_mapped(root: int) -> set[str]:
    """Shared-memory segments mapped by ``root`` or any process below it that could be left in
    /dev/shm: not semaphores, not files already unlinked (multiprocessing's own heap arenas)."""
    names = set()
    for pid in process_tree(root):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            if "/dev/shm/" in line and not line.endswith(" (deleted)"):
                name = line.split("/dev/shm/", 1)[1]
                if not name.startswith("sem."):
                    names.add(name)
    return names


class ShmWatch:
    """Samples ``shm_mapped(root)`` in a thread: every segment a run maps while it runs."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.before = shm_mapped(root)
        self.seen: set[str] = set()
        self._done = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self.seen |= shm_mapped(self.root) - self.before

    def __enter__(self) -> ShmWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._t.join(5)

    def outside(self, prefix: str) -> set[str]:
        return {n for n in self.seen if not n.startswith(prefix)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """Polls a Prometheus endpoint in a thread until a metric shows up (or the block ends)."""

    def __init__(self, port: int, wanted: str) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.wanted = wanted
        self.body = ""
        self._done = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.1):
            try:
                body = urllib.request.urlopen(self.url, timeout=2).read().decode()
            except OSError:
                continue
            if self.wanted in body:
                self.body = body
                return

    def __enter__(self) -> Scraper:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._t.join(5)


def test_lossless_file_gives_every_frame_once_in_order(tmp_path: Path) -> None:
    """Two files, lossless: N results for N frames, in order, with frame indices and PTS; the
    Prometheus endpoint serves the per-camera metrics meanwhile."""
    from pipeline.config import load_config
    from pipeline.supervisor import Supervisor

    n = 37
    make_clip(tmp_path / "a.mp4", n, w=320, h=240)  # 320x240 -> 4 tiles of 224: batches span frames
    make_clip(tmp_path / "b.mp4", 23)
    port = free_port()
    cfg = load_config(write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4")},
                                              "b": {"url": str(tmp_path / "b.mp4")}},
                                   metrics={"port": port}))
    sup = Supervisor(cfg, console=False)
    with Scraper(port, 'crowdstream_frames_out_total{camera="a"}') as scraper, \
            ShmWatch(os.getpid()) as shm:
        assert sup.run() == 0
    counts, status = read_jsonl(tmp_path / "run" / "counts.jsonl")
    for cam, frames, size in (("a", n, [240, 320]), ("b", 23, [120, 160])):
        mine = [c for c in counts if c["camera"] == cam]
        assert [c["frame_index"] for c in mine] == list(range(frames))
        assert all(c["frame_size"] == size for c in mine)
        assert [c["pts"] for c in mine] == pytest.approx([i / 25 for i in range(frames)])
        assert all(c["latency_ms"] > 0 and np.isfinite(c["count"]) for c in mine)
        assert [s["state"] for s in status if s["camera"] == cam][-1] == "finished"
    snap = sup.last_snapshot
    assert snap is not None
    assert snap.cameras["a"].ring["emitted"] == n and snap.cameras["a"].ring["drops"] == 0
    # every 4-tile frame was stitched from its own tiles: raw counts differ between frames
    a = [c["raw_count"] for c in counts if c["camera"] == "a"]
    assert len(set(np.round(a, 3))) > 1
    assert not leftover_segments(os.getpid())
    # every segment any process of the run mapped was made under the run's prefix
    assert shm.seen and not shm.outside(sup.prefix), shm.seen
    assert scraper.body, "no metrics scraped while running"
    for name in ('crowdstream_frames_in_total{camera="a"}', 'crowdstream_queue_depth',
                 'crowdstream_camera_state{camera="b",state="online"}', "crowdstream_stage_up",
                 "crowdstream_frames_dropped_total", "crowdstream_latency_seconds"):
        assert name in scraper.body


def test_latest_policy_counts_drops_exactly_and_random_init_says_so(tmp_path: Path) -> None:
    """A fast file into a 2-slot ring under `latest`: every decoded frame is either counted or
    dropped, and the drop counter says exactly how many. Run through `crowdstream run` with a
    missing checkpoint and model.random_init set: the fallback is announced."""
    n = 120
    make_clip(tmp_path / "a.mp4", n, w=320, h=240)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "queue_policy": "latest"}},
                       runtime={"frame_slots": 2},
                       model={"checkpoint": str(tmp_path / "missing.pt"),
                              "random_init": "ebc-tiny-rn"})
    r = cli("run", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RANDOM-INIT ebc-tiny-rn" in r.stderr and "missing.pt not found" in r.stderr
    counts, _ = read_jsonl(tmp_path / "run" / "counts.jsonl")
    idx = [c["frame_index"] for c in counts]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)  # in order, each at most once
    m = re.search(r"a: (\d+) counted, (\d+) dropped, (\d+) lost", r.stderr)
    assert m, r.stderr[-2000:]
    counted, dropped, lost = map(int, m.groups())
    assert counted == len(counts)
    assert counted + dropped + lost == n
    assert dropped > 0, "inference should not keep up with decoding a tiny clip"


@pytest.mark.parametrize(("model", "camera", "expect"), [
    ({"checkpoint": "nowhere/model.pt"}, None, "model.checkpoint: checkpoint file not found"),
    ({"engine": "nowhere/m.onnx"}, None, "model.engine: engine file not found"),
    ({"random_init": "ebc-tiny-rn", "batch": 0}, None, "model.batch: must be >= 1, got 0"),
    ({"random_init": "ebc-tiny-rn"}, {"url": "x.mp4", "queue_policy": "sometimes"},
     "cameras.a.queue_policy"),
])
def test_bad_config_gives_a_clear_error(tmp_path: Path, model: dict, camera: dict | None,
                                        expect: str) -> None:
    doc = {"model": model, "metrics": {"port": None}, "redis": {"enabled": False},
           "cameras": {"a": camera or {"url": "x.mp4"}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = cli("run", str(path), timeout=60)
    assert r.returncode == 2, r.stderr
    assert "config error" in r.stderr and str(path) in r.stderr and expect in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["checkpoint", "engine"])
def test_a_garbage_model_is_one_line_without_a_traceback(tmp_path: Path, kind: str) -> None:
    """A checkpoint (or an ONNX engine, with a well-formed sidecar so ONNX Runtime itself gets
    to refuse it) full of random bytes: the child's failure reaches the user as ONE line naming
    the key and the file, no traceback (that is at DEBUG only), exit status 2."""
    from engines.backends.sidecar import write_sidecar

    rng = np.random.default_rng(0)
    path = tmp_path / ("m.pt" if kind == "checkpoint" else "m.onnx")
    path.write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    if kind == "engine":
        write_sidecar(path, {"backend": "onnx", "precision": "fp32", "window": [224, 224],
                             "block_size": 8, "batch": {"min": 1, "opt": 4, "max": 4},
                             "input_name": "image", "output_name": "density"})
    make_clip(tmp_path / "a.mp4", 5)
    cfg = write_config(tmp_path, {"a": str(tmp_path / "a.mp4")},
                       model={"random_init": None, kind: str(path), "backend": "onnx"})
    r = cli("run", str(cfg), "--quiet", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("crowdstream:")]
    assert f"model.{kind}: cannot load the model" in line and str(path) in line, line
    assert not [ln for ln in r.stderr.splitlines() if " ERROR " in ln], r.stderr
    debug = cli("--log-level", "DEBUG", "run", str(cfg), "--quiet", timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # for whoever debugs it


def test_messages_never_published_are_in_the_summary_and_exit_3(tmp_path: Path) -> None:
    """Redis unreachable the whole run (a port nothing listens on) with a tiny outage buffer:
    counting finishes, every message the publisher evicted or still held at close is counted in
    the summary line as unpublished, and the exit status says data was lost (3)."""
    make_clip(tmp_path / "a.mp4", 30)
    cfg = write_config(tmp_path, {"a": str(tmp_path / "a.mp4")},
                       redis={"enabled": True, "url": f"redis://127.0.0.1:{free_port()}",
                              "buffer_max_messages": 5, "connect_timeout_s": 0.2},
                       runtime={"drain_timeout_s": 1})
    r = cli("run", str(cfg), "--quiet", timeout=120)
    assert r.returncode == 3, r.stderr
    # 30 counts + starting / online / finished: 33 messages, none delivered
    # (the counting rate sits between the tallies and the loss)
    assert re.search(r"all sources ended; a: 30 counted, 0 dropped, 0 lost, 33 unpublished; "
                     r"[^;]*frames/s; DATA LOST: a\n", r.stderr), r.stderr[-3000:]
    assert len(read_jsonl(tmp_path / "run" / "counts.jsonl")[0]) == 30  # the file has them all


def test_a_long_cjk_and_emoji_camera_name_is_counted_published_and_recorded(
        tmp_path: Path) -> None:
    """A 150-byte camera name in CJK and emoji (a frame record holds 96 bytes: the old cut fell
    inside the emoji and the tile stage crashed on every frame): every frame is counted,
    published to Redis and written to JSON lines under the REAL name, and recorded under a safe
    file name."""
    from pipeline.client import CrowdClient
    from pipeline.redis_embedded import EmbeddedRedis
    from pipeline.shm import NAME_BYTES

    name = "ab" + "大厅入口🎥" * 9 + "東x"
    assert len(name.encode()) == 150 and not _is_char_boundary(name, NAME_BYTES)
    n = 20
    make_clip(tmp_path / "a.mp4", n)
    cfg = write_config(tmp_path, {name: {"url": str(tmp_path / "a.mp4"),
                                         "recording": {"enabled": True}}},
                       redis={"enabled": True, "heatmap_every_s": 0.5})
    r = cli("run", str(cfg), "--quiet", timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert " ERROR " not in r.stderr, r.stderr[-3000:]
    m = re.search(re.escape(f"{name}: {n} counted, 0 dropped, 0 lost, 0 unpublished, ")
                  + r"(\d+) not recorded", r.stderr)
    assert m, r.stderr[-3000:]
    counts, status = read_jsonl(tmp_path / "run" / "counts.jsonl")
    assert [c["frame_index"] for c in counts] == list(range(n))
    assert {c["camera"] for c in counts + status} == {name}
    with EmbeddedRedis(tmp_path / "run" / "redis") as srv:
        client = CrowdClient(srv.url)
        assert client.cameras() == [name]
        assert [m["frame_index"] for _, m in client.counts(name)] == list(range(n))
        assert client.latest(name)["status"] == "finished"
        client.close()
    (folder,) = (tmp_path / "run" / "recordings").iterdir()
    assert folder.name.startswith("ab大厅入口") and len(folder.name.encode()) <= 64 + 9
    assert "/" not in folder.name and "🎥" not in folder.name
    files = sorted(folder.glob("*.mp4"))
    assert files and all(len(f.name.encode()) < 255 for f in files)
    import av

    recorded = 0
    for f in files:
        with av.open(str(f)) as c:
            recorded += sum(1 for _ in c.decode(video=0))
    assert recorded + int(m.group(1)) == n  # every frame recorded or counted as not recorded


def _is_char_boundary(text: str, at: int) -> bool:
    try:
        text.encode()[:at].decode()
    except UnicodeDecodeError:
        return False
    return True


def test_full_dev_shm_is_a_clear_error_at_start(tmp_path: Path) -> None:
    free = os.statvfs("/dev/shm")
    free_mb = free.f_bavail * free.f_frsize / 2**20
    slots = int(free_mb / (8192 * 8192 * 3 / 2**20)) + 2  # one more 8K frame slot than fits
    cfg = write_config(tmp_path, {"a": {"url": "rtsp://127.0.0.1:9/none"}},
                       runtime={"frame_slots": slots, "max_frame_width": 8192,
                                "max_frame_height": 8192})
    r = cli("run", str(cfg), "--quiet", timeout=60)
    assert r.returncode == 1
    assert "/dev/shm too small" in r.stderr and "MiB" in r.stderr, r.stderr


@pytest.mark.parametrize("camera_scale", [None, 0.5])
def test_the_pipeline_resizes_frames_as_predict_does(tmp_path: Path, camera_scale: float | None
                                                     ) -> None:
    """The model's resize rule (CLIP-Count's 128-high frames for count-tiny) or the camera's own
    input_scale is applied by the tile stage exactly as engines.predict applies it: every frame's
    count through the pipeline equals predict() on the same decoded frame."""
    from engines.backends import load_engine
    from engines.predict import predict
    from engines.video import read_frames
    from pipeline.config import load_config
    from pipeline.supervisor import Supervisor

    clip = make_clip(tmp_path / "a.mp4", 6, w=320, h=240)
    cam = {"url": str(clip), **({"input_scale": camera_scale} if camera_scale else {})}
    cfg = load_config(write_config(tmp_path, {"a": cam},
                                   model={"random_init": "count-tiny", "backend": "torch"}))
    assert Supervisor(cfg, console=False).run() == 0
    counts, _ = read_jsonl(tmp_path / "run" / "counts.jsonl")
    engine = load_engine(None, backend="torch", random_init="count-tiny", max_batch=4, threads=1)
    want = [predict(engine, rgb, input_scale=camera_scale)
            for _, rgb in read_frames(str(clip))]
    assert [c["raw_count"] for c in counts] == pytest.approx([d.count for d in want], rel=1e-4)
    # cells are in the decoded frame's pixels: 128 / 240 of a frame when count-tiny's rule
    # resizes it, 0.5 with the camera's scale (count-tiny's cells are 1 px of its input)
    scale = camera_scale or 128 / 240
    assert counts[0]["cell_pixels"] == pytest.approx(1 / scale, rel=1e-3)
    assert counts[0]["frame_size"] == [240, 320]


def tiny_checkpoint(path: Path, spec: str, name: str, seed: int) -> Path:
    """A small random-init model saved as our checkpoint, with a model card named ``name``."""
    import torch

    from engines.checkpoint import save_checkpoint
    from engines.modelcard import ModelCard
    from engines.models.registry import create_model, small_spec

    torch.manual_seed(seed)
    return save_checkpoint(path, create_model(small_spec(spec)).eval(), {},
                           card=ModelCard(name, summary="a test model"))


def test_cameras_with_their_own_models_are_counted_by_them(tmp_path: Path) -> None:
    """Three cameras, two models (CLIP-Count-like with 128-high frames and 1-px cells, CLIP-EBC
    with 224 windows and 8-px cells): camera a names its own model, b uses the global one, c
    names the global one's file (shared: one engine). Every frame's count equals predict() of
    its own camera's model on the same decoded frame; records and the status line name it."""
    from engines.backends import load_engine
    from engines.predict import predict
    from engines.video import read_frames
    from pipeline.config import load_config
    from pipeline.console import camera_line
    from pipeline.schema import validate
    from pipeline.supervisor import Supervisor

    count_ckpt = tiny_checkpoint(tmp_path / "count.pt", "count-tiny", "tiny-count", 1)
    ebc_ckpt = tiny_checkpoint(tmp_path / "ebc.pt", "ebc-tiny-rn", "tiny-ebc", 2)
    clips = {c: make_clip(tmp_path / f"{c}.mp4", 5 + i, w=320, h=240)
             for i, c in enumerate("abc")}
    cams = {"a": {"url": str(clips["a"]), "model": {"checkpoint": str(count_ckpt)}},
            "b": {"url": str(clips["b"])},
            "c": {"url": str(clips["c"]), "model": {"checkpoint": str(ebc_ckpt)}}}
    cfg = load_config(write_config(tmp_path, cams, model={
        "random_init": None, "checkpoint": str(ebc_ckpt), "backend": "torch", "batch": 4}))
    sup = Supervisor(cfg, console=False)
    assert sup.run() == 0
    assert [e["label"] for e in sup.engines] == ["tiny-count", "tiny-ebc"]  # c shares b's
    counts, _ = read_jsonl(tmp_path / "run" / "counts.jsonl")
    own = {"a": count_ckpt, "b": ebc_ckpt, "c": ebc_ckpt}
    for cam, ckpt in own.items():
        engine = load_engine(str(ckpt), backend="torch", max_batch=4, threads=1)
        want = [predict(engine, rgb).count for _, rgb in read_frames(str(clips[cam]))]
        got = [c for c in counts if c["camera"] == cam]
        assert [c["frame_index"] for c in got] == list(range(len(want)))
        assert [c["raw_count"] for c in got] == pytest.approx(want, rel=1e-4), cam
        assert {c["engine_id"] for c in got} == {engine.engine_id}
        assert {c["model"] for c in got} == {"tiny-count" if cam == "a" else "tiny-ebc"}
        engine.close()
    for c in counts:
        validate({k: v for k, v in c.items() if k != "type"} | {"type": "count"})
    snap = sup.last_snapshot
    assert set(snap.pools) == {"tiny-count", "tiny-ebc"}
    assert all(p["tiles"] > 0 for p in snap.pools.values())
    assert "model tiny-count" in camera_line("a", snap, sup.metrics)
    assert "model tiny-ebc" in camera_line("b", snap, sup.metrics)


def make_scene_clip(path: Path, n: int, walker_from: int | None = None) -> Path:
    """A 640 x 480 MPEG-4 clip of a static textured scene; from frame ``walker_from`` on a dark
    figure walks along the top row of tiles."""
    import av
    import cv2

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    bg = cv2.resize(coarse, (640, 480), interpolation=cv2.INTER_CUBIC)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        s.bit_rate = 4_000_000
        for i in range(n):
            img = bg.copy()
            if walker_from is not None and i >= walker_from:
                x = 40 + 20 * (i - walker_from)
                img[60:140, x:x + 30] = 20
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_motion_gate_skips_a_static_scene_through_the_pipeline(tmp_path: Path) -> None:
    """A static camera with the gate on: after the first frame >= 90% of its tiles are reused
    (in the records, the per-camera tile counters and the inference tile count); a camera with
    the gate off (the default) is counted whole and its records carry no reuse field."""
    from pipeline.config import load_config
    from pipeline.schema import validate
    from pipeline.supervisor import Supervisor

    n = 20
    still = make_scene_clip(tmp_path / "still.mp4", n)
    walk = make_scene_clip(tmp_path / "walk.mp4", n, walker_from=5)
    gate = {"enabled": True, "max_age_s": 100}
    cams = {"still": {"url": str(still), "motion_gate": gate},
            "walk": {"url": str(walk), "motion_gate": gate},
            "plain": {"url": str(still)}}
    cfg = load_config(write_config(tmp_path, cams))  # ebc-tiny-rn: 224 windows, 3 x 3 tiles
    sup = Supervisor(cfg, console=False)
    assert sup.run() == 0
    counts, _ = read_jsonl(tmp_path / "run" / "counts.jsonl")
    by = {c: [r for r in counts if r["camera"] == c] for c in cams}
    assert all(len(v) == n for v in by.values())
    still_reused = [r["reused_tiles"]["count"] for r in by["still"]]
    assert still_reused[0] == 0 and by["still"][0]["reused_tiles"]["of"] == 9
    assert sum(still_reused[1:]) >= 0.9 * 9 * (n - 1)
    walk_reused = [r["reused_tiles"] for r in by["walk"]]
    for i in range(6, n):  # the walker's tile (top row) is never reused
        x = 40 + 20 * (i - 5)
        tile = 0 if x + 30 <= 224 else 1
        assert tile not in walk_reused[i]["indices"], (i, walk_reused[i])
    assert all("reused_tiles" not in r for r in by["plain"])
    # the still camera's counts are the plain camera's (same clip) up to the compression noise
    # between a frame and the one its tiles were counted on (bit for bit: tests/test_motion.py)
    assert by["still"][0]["raw_count"] == pytest.approx(by["plain"][0]["raw_count"], rel=1e-9)
    for a, b in zip(by["still"], by["plain"], strict=True):
        assert a["raw_count"] == pytest.approx(b["raw_count"], rel=1e-3)
    for r in counts[:5]:
        validate({**r})
    cams_snap = sup.last_snapshot.cameras
    assert cams_snap["still"].ring["tiles"] == 9 * n
    assert cams_snap["still"].ring["tiles_reused"] == sum(still_reused)
    assert cams_snap["plain"].ring["tiles_reused"] == 0
    reused = sum(c.ring["tiles_reused"] for c in cams_snap.values())
    assert sup.last_snapshot.pool["tiles"] == 3 * 9 * n - reused  # reused tiles never ran
