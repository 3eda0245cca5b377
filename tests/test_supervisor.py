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
    """A live-like looping source publishing to the embedded Redis: SIGKILL the tile process (the
    chain restarts and counting resumes), SIGKILL the ingest process (restarted, counting
    resumes), then SIGTERM the run: it drains, exits in bounded time, no process of the run (the
    valkey-server included) is left and /dev/shm is clean."""
    make_clip(tmp_path / "a.mp4", 50)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "loop": True,
                                        "realtime": True}},
                       redis={"enabled": True, "heatmap_every_s": 5.0},
                       runtime={"restart_backoff_s": 0.2})
    out = tmp_path / "run" / "counts.jsonl"
    run = RunningCli(cfg)
    try:
        run.wait_for(r"spawned stage=ingest:a")
        _wait_results(out, 5)
        assert leftover_segments(run.proc.pid), "segments should exist while running"
        tree = set(process_tree(run.proc.pid))
        assert {Path(f"/proc/{p}/comm").read_text().strip() for p in tree if not _gone(p)} >= \
            {"valkey-server", "cs-tile", "cs-post"}
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
        tree |= set(process_tree(run.proc.pid))
        t0 = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        rc = run.finish(30)
        took = time.monotonic() - t0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    # the frames the killed tile process held are counted as lost, and the exit status says
    # data was lost (3); a kill that caught it holding none leaves a clean run (0)
    summary = run.wait_for(r"stopped by signal, drained; a: \d+ counted, \d+ dropped, (\d+) lost")
    lost = int(summary.group(1))
    assert rc == (3 if lost else 0), run.text()[-3000:]
    assert ("DATA LOST: a" in run.text()) == bool(lost)
    assert took < 20, f"shutdown took {took:.1f} s"
    assert not leftover_segments(run.proc.pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(p) for p in tree):
        time.sleep(0.2)
    assert all(_gone(p) for p in tree), {p for p in tree if not _gone(p)}


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


def _fail(message: str) -> None:
    raise ValueError(message)


def test_a_failing_child_reports_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    """Every child starts through ``child_main``: an exception in it is ONE line at ERROR (stage,
    camera, type, first line of the message), no traceback, exit status 1."""
    import multiprocessing as mp

    from pipeline.process import ChildSpec, StopFlag, spawn_child

    ctx = mp.get_context("spawn")
    spec = ChildSpec("ingest-lobby 1", "test_supervisor:_fail", StopFlag(ctx), camera="lobby 1")
    p = spawn_child(ctx, spec, "frame 12 is not decodable\n(details on a second line)")
    p.join(60)
    err = capfd.readouterr().err
    assert p.exitcode == 1
    assert "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if "ERROR" in ln]
    assert line.endswith('failed camera="lobby 1" stage=ingest '
                         'error="ValueError: frame 12 is not decodable"'), line


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


@pytest.mark.timeout(300)
def test_killed_post_with_the_recorder_on_loses_only_what_it_held(tmp_path: Path) -> None:
    """SIGKILL the post process of a run that records and publishes to the embedded Redis: the
    chain restarts, the recorder (the supervisor's child, not post's) records on, the JSON-lines
    file holds every frame that reached Redis (a line is written before its message is queued),
    frames missing from the file are at most those counted as lost, what the killed process still
    had to publish is counted as unpublished, the exit status says data was lost; afterwards no
    process of the run is left and /dev/shm is empty."""
    from pipeline.redis_embedded import EmbeddedRedis

    make_clip(tmp_path / "a.mp4", 50)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "loop": True,
                                        "realtime": True, "queue_policy": "lossless",
                                        "recording": {"enabled": True, "segment_s": 1.0}}},
                       redis={"enabled": True, "heatmap_every_s": 1.0},
                       runtime={"restart_backoff_s": 0.2})
    run_dir = tmp_path / "run"
    out = run_dir / "counts.jsonl"
    run = RunningCli(cfg)
    try:
        _wait_results(out, 20)
        recorder = run.pid_of("recorder")
        tree = set(process_tree(run.proc.pid))
        tree |= {int(re.search(r'"pid": (\d+)', (run_dir / "redis" / "server.json")
                               .read_text()).group(1))}
        os.kill(run.pid_of("post"), signal.SIGKILL)
        run.wait_for(r"stage crashed stage=post")
        run.wait_for(r"stage chain restarted")
        run.wait_for(r"spawned stage=post pid=\d+[\s\S]*spawned stage=post pid=\d+")
        _wait_results(out, len(read_jsonl(out)[0]) + 10)  # counting resumed
        assert run.pid_of("recorder") == recorder and not _gone(recorder)  # never orphaned
        tree |= set(process_tree(run.proc.pid))
        run.proc.send_signal(signal.SIGTERM)
        rc = run.finish(60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    text = run.text()
    m = re.search(r"stopped by signal, drained; a: (\d+) counted, 0 dropped, (\d+) lost, "
                  r"(\d+) unpublished, (\d+) not recorded", text)
    assert m, text[-3000:]
    counted, lost, unpublished = int(m.group(1)), int(m.group(2)), int(m.group(3))
    assert rc == (3 if lost or unpublished else 0), text[-3000:]
    lines = [c["frame_index"] for c in read_jsonl(out)[0]]
    assert lines == sorted(set(lines)), "JSON lines out of order or twice"
    assert len(lines) >= counted
    missing = set(range(lines[-1] + 1)) - set(lines)
    assert len(missing) <= lost, (sorted(missing), lost)
    with EmbeddedRedis(run_dir / "redis") as srv:  # the run's data, read after the run
        from pipeline.client import CrowdClient

        client = CrowdClient(srv.url)
        in_redis = [m["frame_index"] for _, m in client.counts("a")]
        client.close()
    assert in_redis == sorted(set(in_redis))
    assert set(in_redis) <= set(lines), sorted(set(in_redis) - set(lines))
    assert len(set(lines) - set(in_redis)) <= unpublished
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(p) for p in tree):
        time.sleep(0.2)
    assert all(_gone(p) for p in tree), {p for p in tree if not _gone(p)}
    assert not leftover_segments(run.proc.pid)
    assert sorted((run_dir / "recordings").rglob("*.mp4"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("bad_camera", [False, True], ids=["healthy", "a-camera-offline"])
def test_a_stop_exit_status_and_alerts_end_with_shutdown(tmp_path: Path, bad_camera: bool) -> None:
    """SIGTERM a running run: a healthy one exits 0; one where a camera went offline for bad
    input before the stop exits 1 (the stop does not hide it). Either way the alert that was
    active ends with reason ``shutdown``, never ``camera_offline``: the stop is told from a
    failure (``offline: stopped``)."""
    from pipeline.client import CrowdClient
    from pipeline.redis_embedded import EmbeddedRedis

    make_clip(tmp_path / "a.mp4", 50)
    cams: dict = {"a": {"url": str(tmp_path / "a.mp4"), "loop": True, "realtime": True,
                        "alerts": [{"name": "any", "threshold": 0.0, "cooldown_s": 0}]}}
    if bad_camera:
        (tmp_path / "bad.mp4").write_bytes(b"not a video at all\n" * 100)
        cams["bad"] = {"url": str(tmp_path / "bad.mp4")}
    cfg = write_config(tmp_path, cams, redis={"enabled": True, "heatmap_every_s": 5.0},
                       runtime={"max_frame_width": 320, "max_frame_height": 240})
    run = RunningCli(cfg)
    try:
        _wait_results(tmp_path / "run" / "counts.jsonl", 5)
        run.wait_for(r"alert start")
        if bad_camera:
            run.wait_for(r"state camera=bad state=offline reason=\"not a video")
        run.proc.send_signal(signal.SIGTERM)
        rc = run.finish(60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    text = run.text()
    assert rc == (1 if bad_camera else 0), text[-3000:]
    assert ("offline: bad" in text) == bad_camera
    with EmbeddedRedis(tmp_path / "run" / "redis") as srv:
        client = CrowdClient(srv.url)
        events = [m for _, m in client.alerts()]
        status = [m for _, m in client.status("a")]
        client.close()
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "end", events
    assert events[-1]["reason"] == "shutdown", events[-1]
    assert (status[-1]["state"], status[-1]["reason"]) == ("offline", "stopped")


class RedisCommand:
    """``crowdstream redis --run-dir DIR`` in a subprocess (serves an ended run's data)."""

    def __init__(self, run_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "redis", "--run-dir", str(run_dir)], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline()  # the connect lines come once it serves

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, self.first + out + err


def test_redis_command_stopped_while_starting_leaves_no_server(tmp_path: Path) -> None:
    """SIGTERM ``crowdstream redis --run-dir`` the moment its server has started, before it
    printed how to connect: it still stops the server (its handlers are in place before the
    server starts) and exits 0; nothing is left serving the run's data."""
    from pipeline.redis_embedded import EmbeddedRedis, find_running

    data = tmp_path / "run" / "redis"
    with EmbeddedRedis(data) as srv:  # a run's data
        import redis as redis_py

        redis_py.Redis.from_url(srv.url).set("k", "v")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "redis", "--run-dir",
                             str(tmp_path / "run")], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the server's "started" log line
    assert "started" in line, line
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, line + err
    assert find_running(data) is None
    pid = int(re.search(r"pid=(\d+)", line).group(1))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _gone(pid):
        time.sleep(0.1)
    assert _gone(pid), "the server outlived the command"


@pytest.mark.timeout(300)
def test_embedded_redis_killed_twice_loses_nothing_and_is_readable_after_the_run(
        tmp_path: Path) -> None:
    """SIGKILL the embedded valkey-server twice mid-run: the supervisor restarts it on the same
    port and data, what the publisher buffered meanwhile is delivered, and every frame's count
    reaches the stream exactly once, in order; the summary says nothing was lost (exit 0). The
    server requires the run's generated password (a 0600 file, never logged), stops with the run,
    and ``crowdstream redis --run-dir`` serves the data again afterwards."""
    from pipeline.client import CrowdClient
    from pipeline.redis_embedded import find_running

    n = 400  # 16 s at 25 fps: both kills land well before the file ends, even on a busy box
    make_clip(tmp_path / "a.mp4", n)
    cfg = write_config(tmp_path, {"a": {"url": str(tmp_path / "a.mp4"), "realtime": True,
                                        "queue_policy": "lossless"}},
                       redis={"enabled": True, "heatmap_every_s": 5.0},
                       runtime={"restart_backoff_s": 0.2})
    run = RunningCli(cfg)
    run_dir = tmp_path / "run"
    data = run_dir / "redis"
    try:
        _wait_results(run_dir / "counts.jsonl", 10)
        url = find_running(data)
        assert url, run.text()[-3000:]
        for kill in range(2):
            before = len(read_jsonl(run_dir / "counts.jsonl")[0])
            assert before < n - 50, "the file nearly ended before the kill: make it longer"
            os.kill(run.pid_of("redis", after=kill), signal.SIGKILL)
            run.wait_for(r"stage crashed stage=redis" + r"[\s\S]*stage crashed stage=redis" * kill)
            run.wait_for(r"(spawned stage=redis pid=\d+[\s\S]*)" + f"{{{kill + 2}}}")
            assert find_running(data) == url  # same address and password: publishers go on
            _wait_results(run_dir / "counts.jsonl", before + 20)  # counting never stopped
        rc = run.finish(120)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    out = run.text()
    assert rc == 0, out[-3000:]
    assert re.search(rf"all sources ended; a: {n} counted, 0 dropped, 0 lost, 0 unpublished", out)
    assert "restarts 2" in out
    assert find_running(data) is None  # stopped last, with the run
    password = (data / "password").read_text().strip()
    assert (data / "password").stat().st_mode & 0o777 == 0o600
    assert (data / "valkey.conf").stat().st_mode & 0o777 == 0o600
    assert password not in out and "REDISCLI_AUTH" in out  # how to connect, not the secret
    cmd = RedisCommand(run_dir)
    try:
        assert "serving the data of" in cmd.first, cmd.first
        import redis as redis_py

        with pytest.raises(redis_py.AuthenticationError):  # the password is required
            redis_py.Redis.from_url(url.replace(f":{password}@", "")).ping()
        client = CrowdClient.from_run_dir(run_dir)
        got = [m["frame_index"] for _, m in client.counts("a")]
        assert got == list(range(n))  # every frame once, in order, across two kills
        assert {m["run_id"] for _, m in client.counts("a")} == \
            {c["run_id"] for c in read_jsonl(run_dir / "counts.jsonl")[0]}
        client.close()
    finally:
        rc_cmd, text = cmd.stop()
    assert rc_cmd == 0, text
    assert password not in text
    assert find_running(data) is None
