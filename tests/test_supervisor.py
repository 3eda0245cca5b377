"""The supervisor with real processes: crashes are restarted (the recorder and the embedded Redis
too), signals drain, nothing outlives a killed supervisor, /dev/shm stays clean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_pipeline import (
    REPO,
    ShmWatch,
    leftover_segments,
    make_clip,
    process_tree,
    read_jsonl,
    tiny_checkpoint,
    write_config,
)


class RunningCli:
    """``crowdstream run`` in a subprocess, its stderr collected line by line."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(config)], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen; stderr:\n{self.text()[-4000:]}")

    def pid_of(self, stage: str, after: int = 0) -> int:
        pids = re.findall(rf"spawned stage={re.escape(stage)} pid=(\d+)", self.text())
        assert len(pids) > after, self.text()[-3000:]
        return int(pids[after])

    def finish(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # faulthandler: where is it stuck?
            time.sleep(1.0)
            raise AssertionError(f"still running after {timeout} s; stderr:\n"
                                 f"{self.text()[-5000:]}") from None
        self._t.join(5)
        return rc


def _wait_results(path: Path, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and sum(1 for ln in path.read_text().splitlines()
                                 if '"count"' in ln) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} results in {path} after {timeout} s")


@pytest.mark.parametrize("models", [1, 2])
def test_killed_inference_is_restarted_and_no_frame_is_lost(tmp_path: Path, models: int) -> None:
    n = 100
    make_clip(tmp_path / "a.mp4", n)
    # paced like a live camera (25 fps) but lossless: the kill lands mid-file, and every frame
    # must still be counted exactly once, in order, by the restarted inference process
    cams = {"a": {"url": str(tmp_path / "a.mp4"), "realtime": True, "queue_policy": "lossless"}}
    if models == 2:  # a second camera with its own model: each pool's batches are requeued
        own = tiny_checkpoint(tmp_path / "own.pt", "count-tiny", "own", 3)
        cams["b"] = {**cams["a"], "model": {"checkpoint": str(own)}}
    cfg = write_config(tmp_path, cams, runtime={"restart_backoff_s": 0.2})
    run = RunningCli(cfg)
    try:
        run.wait_for(r"spawned stage=post")
        _wait_results(tmp_path / "run" / "counts.jsonl", 10)
        os.kill(run.pid_of("inference"), signal.SIGKILL)
        run.wait_for(r"stage crashed stage=inference")
        run.wait_for(r"restarting stage=inference")
        rc = run.finish(120)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == 0, run.text()[-3000:]
    assert run.pid_of("inference", after=1) != run.pid_of("inference")
    counts, _ = read_jsonl(tmp_path / "run" / "counts.jsonl")
    for cam in cams:
        assert [c["frame_index"] for c in counts if c["camera"] == cam] == list(range(n))
    assert "restarts 1" in run.text()  # the status line counts the crash
    assert not leftover_segments(run.proc.pid)


def test_sigkilled_child_then_sigterm_leaves_no_segment(tmp_path: Path) -> None:
    """A live-like looping source: SIGKILL the tile process (the chain restarts and counting
    resumes), SIGKILL the ingest process (restarted, counting resumes), then SIGTERM the run: it
    drains, exits 0 in bounded time, and /dev/shm is clean."""
    make_clip(tmp_path / "a.mp4", 50)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "loop": True,
                                        "realtime": True}},
                       runtime={"restart_backoff_s": 0.2})
    out = tmp_path / "run" / "counts.jsonl"
    run = RunningCli(cfg)
    try:
        run.wait_for(r"spawned stage=ingest:a")
        _wait_results(out, 5)
        assert leftover_segments(run.proc.pid), "segments should exist while running"
        os.kill(run.pid_of("tile"), signal.SIGKILL)
        run.wait_for(r"stage chain restarted")
        run.wait_for(r"spawned stage=post pid=\d+[\s\S]*spawned stage=post pid=\d+")
        before = len(read_jsonl(out)[0])
        _wait_results(out, before + 5)  # counting resumed after the restart
        idx = [c["frame_index"] for c in read_jsonl(out)[0]]
        assert idx == sorted(idx) and len(set(idx)) == len(idx)
        # a SIGKILLed ingest (no end of stream written) is restarted too
        os.kill(run.pid_of("ingest:a"), signal.SIGKILL)
        run.wait_for(r"stage crashed stage=ingest:a")
        run.wait_for(r"restarting stage=ingest:a")
        before = len(read_jsonl(out)[0])
        _wait_results(out, before + 5)
        t0 = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        rc = run.finish(30)
        took = time.monotonic() - t0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == 0, run.text()[-3000:]
    assert took < 20, f"shutdown took {took:.1f} s"
    assert "stopped by signal" in run.text()
    assert not leftover_segments(run.proc.pid)


def _wait_forever(flag) -> None:
    flag.wait()


def test_stop_flag_set_does_not_hang_on_a_killed_waiter() -> None:
    import multiprocessing as mp

    from pipeline.process import StopFlag

    ctx = mp.get_context("spawn")
    flag = StopFlag(ctx)
    p = ctx.Process(target=_wait_forever, args=(flag,))
    p.start()
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    done = threading.Event()
    t = threading.Thread(target=lambda: (flag.set(), done.set()), daemon=True)
    t.start()
    assert done.wait(5), "set() blocked on a dead waiter"
    assert flag.is_set() and flag.wait(0)
    live = ctx.Process(target=_wait_forever, args=(flag,))
    live.start()
    live.join(30)
    assert live.exitcode == 0


def _decoded_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_killed_recorder_is_restarted_by_the_supervisor(tmp_path: Path) -> None:
    """The recorder is a child like any stage: SIGKILLed, it is restarted with the backoff and
    recording resumes; every segment any process of the run maps is under the run prefix."""
    make_clip(tmp_path / "a.mp4", 50)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "loop": True,
                                        "realtime": True,
                                        "recording": {"enabled": True, "segment_s": 1.0}}},
                       runtime={"restart_backoff_s": 0.2})
    run = RunningCli(cfg)
    try:
        with ShmWatch(run.proc.pid) as shm:
            run.wait_for(r"spawned stage=ingest:a")
            _wait_results(tmp_path / "run" / "counts.jsonl", 5)
            os.kill(run.pid_of("recorder"), signal.SIGKILL)
            run.wait_for(r"stage crashed stage=recorder")
            run.wait_for(r"restarting stage=recorder")
            run.wait_for(r"spawned stage=recorder pid=\d+[\s\S]*spawned stage=recorder pid=\d+")
            time.sleep(2.5)  # more than a segment recorded by the new process
        prefix = f"cs_{run.proc.pid}_"
        assert shm.seen and not shm.outside(prefix), shm.seen
        assert any(n.startswith(prefix) and "rec" in n for n in shm.seen), shm.seen
        run.proc.send_signal(signal.SIGTERM)
        rc = run.finish(60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == 0, run.text()[-3000:]
    assert run.pid_of("recorder", after=1) != run.pid_of("recorder")
    assert "restarts 1" in run.text()
    files = sorted((tmp_path / "run" / "recordings").rglob("*.mp4"))
    assert len(files) >= 2 and not list((tmp_path / "run").rglob("*.part"))
    assert all(_decoded_frames(f) > 0 for f in files)
    assert not leftover_segments(run.proc.pid)


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper counts as gone: it runs nothing, maps nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_nothing_outlives_a_sigkilled_supervisor(tmp_path: Path) -> None:
    """SIGKILL the supervisor of a run with the embedded Redis and the recorder: every stage, the
    recorder, valkey-server and its watchdog end by themselves, and /dev/shm is emptied."""
    from pipeline.redis_embedded import find_running

    make_clip(tmp_path / "a.mp4", 50)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "loop": True,
                                        "realtime": True,
                                        "recording": {"enabled": True, "segment_s": 1.0}}},
                       redis={"enabled": True, "heatmap_every_s": 5.0})
    run = RunningCli(cfg)
    try:
        run.wait_for(r"spawned stage=ingest:a")
        _wait_results(tmp_path / "run" / "counts.jsonl", 5)
        url = find_running(tmp_path / "run" / "redis")
        assert url, run.text()[-3000:]
        info = (tmp_path / "run" / "redis" / "server.json").read_text()
        server_pid = int(re.search(r'"pid": (\d+)', info).group(1))
        pids = set(process_tree(run.proc.pid)) | {server_pid}
        names = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if not _gone(p)}
        assert {"cs-recorder", "cs-post", "cs-ingest-a", "valkey-server"} <= names, names
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.2)
        left = {p: Path(f"/proc/{p}/comm").read_text().strip() for p in pids if not _gone(p)}
        assert not left, f"still running after the supervisor died: {left}"
        while time.monotonic() < deadline and leftover_segments(run.proc.pid):
            time.sleep(0.2)  # the resource tracker unlinks once the last child is gone
        assert not leftover_segments(run.proc.pid)
        assert find_running(tmp_path / "run" / "redis") is None
    finally:
        if run.proc.poll() is None:
            run.proc.kill()


@pytest.mark.timeout(180)
def test_killed_embedded_redis_is_restarted_with_its_data(tmp_path: Path) -> None:
    """SIGKILL the embedded valkey-server mid-run: the supervisor restarts it on the same port and
    data directory, the stream written before the kill is still there, and counting goes on."""
    import redis as redis_py

    from pipeline.redis_embedded import find_running
    from pipeline.redis_keys import RedisKeys

    make_clip(tmp_path / "a.mp4", 50)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "loop": True,
                                        "realtime": True}},
                       redis={"enabled": True, "heatmap_every_s": 5.0},
                       runtime={"restart_backoff_s": 0.2})
    run = RunningCli(cfg)
    data = tmp_path / "run" / "redis"
    try:
        _wait_results(tmp_path / "run" / "counts.jsonl", 10)
        url = find_running(data)
        assert url, run.text()[-3000:]
        time.sleep(1.5)  # the append-only file is synced every second
        r = redis_py.Redis.from_url(url)
        key = RedisKeys("crowdstream").counts("a")
        before = r.xlen(key)
        first = r.xrange(key, count=1)[0][0]
        os.kill(run.pid_of("redis"), signal.SIGKILL)
        run.wait_for(r"stage crashed stage=redis")
        run.wait_for(r"spawned stage=redis pid=\d+[\s\S]*spawned stage=redis pid=\d+")
        assert find_running(data) == url  # same address: publishers reconnect to it
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and r.xlen(key) <= before:
            time.sleep(0.2)
        assert r.xlen(key) > before  # new entries arriving
        assert r.xrange(key, count=1)[0][0] == first  # the ones before the kill are kept
        r.close()
        run.proc.send_signal(signal.SIGTERM)
        rc = run.finish(60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == 0, run.text()[-3000:]
    assert find_running(data) is None  # stopped last, with the run
