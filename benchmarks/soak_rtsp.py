"""Benchmark 4: a long live run from the RTSP test server; memory and /dev/shm must stay flat.

Starts the test suite's real RTSP server (``tests/rtsp_server.py``, aio-rtsp-toolkit) looping a
clip, then either

* ``--mode pipeline`` (default): the whole product, ``crowdstream run`` on a generated config
  (one RTSP camera, a small random-init model, JSON-lines output), or
* ``--mode ingest``: only ``run_ingest`` in its own process, drained by this process,

for ``--duration`` seconds. Every ``--every`` seconds it samples the RSS of every process of the
run (found through /proc as descendants of the run) and the /dev/shm blocks of the run's
segments. After ``--warmup`` seconds, each process's RSS and the /dev/shm usage must stay within
5% (max vs min); capture -> result latency p50/p99 comes from the JSON lines (pipeline) or from
``now - capture_ts`` at the reader (ingest).

The production soak of issue 14 adds (pipeline mode) a second camera, a generated file looping
in real time (``--file-camera``), the embedded Redis (``--redis``) SIGKILLed at the given seconds
(``--kill-redis-at 600,1200``: the supervisor must restart it and lose nothing) and recording of
both cameras with the overlay (``--record``). A restarted process (the Redis server and its
watchdog) is judged from 30 s after its last start. After the SIGINT stop it checks that no
process of the run is left (every pid ever sampled), that /dev/shm holds none of the run's
segments, the run's exit status and its summary line (nothing lost or unpublished), and that every
recorded segment decodes.

Example::

    nice -n 10 .venv/bin/python benchmarks/soak_rtsp.py --duration 600
    nice -n 10 .venv/bin/python benchmarks/soak_rtsp.py --mode ingest --duration 60 --warmup 10
    nice -n 10 .venv/bin/python benchmarks/soak_rtsp.py --duration 1800 --file-camera --redis \
        --kill-redis-at 600,1200 --record        # issue 14's 30-minute soak
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from rtsp_server import RtspServer, make_clip  # noqa: E402

TOLERANCE = 0.05


# -- /proc helpers ---------------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def proc_info(pid: int) -> dict[str, Any] | None:
    """Name and memory (kB) of a process: VmRSS and its anonymous / shared-memory parts."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    f = {k: v.strip() for k, _, v in (ln.partition(":") for ln in status.splitlines())}
    args = [a.decode(errors="replace") for a in cmd if a]
    # spawned children run "python -c 'from multiprocessing.spawn ...'"; name them by role
    name = f.get("Name", "?")
    if name.startswith("cs-"):
        pass  # the pipeline names its stage processes (cs-ingest, cs-tile, ...)
    elif any("resource_tracker" in a for a in args):
        name = "res-tracker"
    elif any("multiprocessing" in a for a in args):
        name = "child" + _libs_tag(pid)
    elif any(a.endswith("crowdstream") or a == "run" for a in args):
        name = "supervisor"
    return {"pid": pid, "name": name, "rss_kb": int(f.get("VmRSS", "0 kB").split()[0]),
            "anon_kb": int(f.get("RssAnon", "0 kB").split()[0]),
            "shmem_kb": int(f.get("RssShmem", "0 kB").split()[0])}


_LIBS = {"libavcodec": "av", "libtorch": "torch", "onnxruntime": "ort", "cv2": "cv2"}


def _libs_tag(pid: int) -> str:
    """Which heavy libraries a spawned child has loaded, e.g. ``[av]`` for an ingest process:
    the spawn command line does not say which stage a child runs."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""
    found = [tag for lib, tag in _LIBS.items() if lib in maps]
    return f"[{','.join(found)}]" if found else "[-]"


def shm_usage(prefix: str) -> tuple[int, int]:
    """(bytes actually used, number of segments) of /dev/shm entries starting with ``prefix``."""
    used = n = 0
    for e in os.scandir("/dev/shm"):
        if e.name.startswith(prefix):
            try:
                used += e.stat().st_blocks * 512
                n += 1
            except OSError:
                pass
    return used, n


# -- the two modes -----------------------------------------------------------------------------

def start_pipeline(tmp: Path, url: str, a: argparse.Namespace) -> tuple[subprocess.Popen, Path]:
    jsonl = tmp / "counts.jsonl"
    recording = {"enabled": a.record, "segment_s": 60.0}
    cameras: dict[str, Any] = {
        "soak": {"url": url, "fps": a.fps, "options": {"probesize": "2048"},
                 "reconnect": {"initial_s": 0.5, "cap_s": 5.0, "stall_timeout_s": 5.0},
                 "recording": recording}}
    if a.file_camera:
        clip = make_clip(tmp / "file" / "loop.mp4", frames=250, width=640, height=480, fps=25)
        cameras["file"] = {"url": str(clip), "loop": True, "realtime": True, "fps": a.fps,
                           "recording": recording}
    cfg = {
        "run_dir": str(tmp / "run"),
        "jsonl": str(jsonl),
        "model": {"random_init": a.random_init, "checkpoint": None, "batch": 4},
        # a short stream keeps the server's memory at its plateau after the warm-up
        "redis": {"enabled": True, "stream_maxlen": 500} if a.redis else {"enabled": False},
        "metrics": {"port": None},
        "cameras": cameras,
    }
    path = tmp / "soak.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    log = open(tmp / "run.log", "wb")  # noqa: SIM115 - lives as long as the run
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(path), "--quiet"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    return proc, jsonl


def pipeline_latencies(jsonl: Path, t_from: float) -> tuple[np.ndarray, int, list[str]]:
    lat, frames, states = [], 0, []
    if not jsonl.exists():
        return np.zeros(0), 0, states
    for line in jsonl.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if d.get("type") == "status":
            states.append(f"{d['state']}: {d['reason']}")
        elif d.get("type") == "count":
            frames += 1
            if d["capture_ts"] >= t_from:
                lat.append(d["latency_ms"])
    return np.array(lat), frames, states


class IngestOnly:
    """run_ingest in a spawned process; a thread here drains the ring and records latency."""

    def __init__(self, url: str, fps: float | None, max_frames: int) -> None:
        from pipeline.config import CameraConfig, ReconnectConfig
        from pipeline.process import ChildSpec, StopFlag, spawn_child
        from pipeline.shm import FrameRing

        self.prefix = f"cssoak_{os.getpid()}_"
        self.ring = FrameRing.create(self.prefix + "ring", 8, 1080, 1920, "latest")
        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self.stop = StopFlag(ctx)
        cfg = CameraConfig(url=url, fps=fps, options={"probesize": "2048"},
                           reconnect=ReconnectConfig(initial_s=0.5, cap_s=5.0,
                                                     stall_timeout_s=5.0))
        self.proc = spawn_child(ctx, ChildSpec("ingest-soak", "pipeline.ingest:run_ingest",
                                               self.stop), "soak", cfg, self.ring.handle(),
                                self.events, self.stop)
        # (capture_ts, latency s), allocated and touched up front so that recording does not
        # grow this process's RSS during the run
        self.lat = np.full((max_frames, 2), np.nan)
        self.frames = 0
        self._done = threading.Event()
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self) -> None:
        from pipeline.shm import EndOfStream

        while not self._done.is_set():
            got = self.ring.get(timeout=0.2)
            if got is None or isinstance(got, EndOfStream):
                continue
            slot, meta, _ = got
            if self.frames < len(self.lat):
                self.lat[self.frames] = (meta.capture_ts, time.time() - meta.capture_ts)
            self.ring.release(slot)
            self.frames += 1

    def close(self) -> None:
        self.stop.set()
        self.proc.join(10)
        self._done.set()
        self._t.join(2)
        self.ring.close()
        self.ring.unlink()
        self.events.close()


def kill_redis(data_dir: Path) -> int:
    """SIGKILL the run's embedded valkey-server (its pid from ``server.json``); returns the pid."""
    pid = int(json.loads((data_dir / "server.json").read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def report_run(tmp: Path, returncode: int, killed: list[tuple[float, int]],
               record: bool) -> bool:
    """The run's own account: exit status, summary line, Redis restarts, recorded segments."""
    log = (tmp / "run.log").read_text(errors="replace")
    summary = [ln for ln in log.splitlines() if "counted," in ln and "crowdstream:" in ln]
    print(f"exit status {returncode}; summary: {summary[-1] if summary else 'none'}")
    ok = returncode == 0 and bool(summary) and "DATA LOST" not in summary[-1]
    if killed:
        crashes = log.count("stage crashed stage=redis")  # ERROR lines: logged at any level
        print(f"embedded Redis SIGKILLed {len(killed)}x at "
              f"{', '.join(f'{t:.0f} s' for t, _ in killed)}; the supervisor saw {crashes} "
              f"crashes and restarted it (the run went on publishing: 0 unpublished above)")
        ok &= crashes == len(killed)
    if record:
        import av

        files = sorted((tmp / "run" / "recordings").rglob("*.mp4"))
        frames = bad = 0
        for f in files:
            try:
                with av.open(str(f)) as c:
                    frames += sum(1 for _ in c.decode(video=0))
            except Exception:  # noqa: BLE001 - counted as a broken segment
                bad += 1
        size = sum(f.stat().st_size for f in files) / 2**20
        print(f"recorded: {len(files)} segments, {frames} frames, {size:.0f} MiB, {bad} broken")
        ok &= bool(files) and not bad
        for f in files:  # they were checked; do not keep hundreds of MiB in /tmp
            f.unlink()
    return ok


def rss_report(samples: list[dict[str, Any]], warmup: float, redis_killed: bool) -> bool:
    """Print each process's RSS after the warm-up; True when every one is flat within 5% (a
    process restarted after the warm-up, the killed Redis, from 30 s after its start)."""
    after = [s for s in samples if s["t"] >= warmup]
    print(f"\n{len(samples)} samples, {len(after)} after the {warmup:.0f} s warm-up")
    ok = len(after) >= 2
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for s in after:
        for p in s["procs"]:
            by_pid.setdefault(p["pid"], []).append(p)
    pids_first = {p["pid"] for p in after[0]["procs"]} if after else set()
    pids_last = {p["pid"] for p in after[-1]["procs"]} if after else set()
    restarted_ok = {"valkey-server", "sh"} if redis_killed else set()  # Redis and its watchdog
    changed = {p["name"] for s in after for p in s["procs"]
               if p["pid"] not in pids_first or p["pid"] not in pids_last}
    if redis_killed and not any(p["name"] == "valkey-server" for p in after[-1]["procs"]):
        print("the embedded Redis was not running at the end: not restarted")
        ok = False
    if changed - restarted_ok:
        print(f"process set changed after warm-up (restarts?): {sorted(pids_first)} -> "
              f"{sorted(pids_last)}")
        ok = False
    print(f"{'pid':>8} {'process':16} {'RSS MiB first':>14} {'last':>8} {'min':>8} {'max':>8} "
          f"{'spread':>7}  (anon MiB first/last)")
    for pid, ps in sorted(by_pid.items()):
        if pid not in pids_last:
            print(f"{pid:>8} {ps[0]['name']:16} (ended: killed, {len(ps)} samples)")
            continue
        if pid not in pids_first:  # restarted after the warm-up: judged from 30 s after start
            t0 = min(s["t"] for s in after if any(p["pid"] == pid for p in s["procs"]))
            ps = [p for s in after if s["t"] >= t0 + 30 for p in s["procs"] if p["pid"] == pid]
            if len(ps) < 2:
                continue
        rss = [p["rss_kb"] / 1024 for p in ps]
        spread = flat(rss)
        ok &= spread <= TOLERANCE
        print(f"{pid:>8} {ps[0]['name']:16} {rss[0]:14.1f} {rss[-1]:8.1f} {min(rss):8.1f} "
              f"{max(rss):8.1f} {100 * spread:6.2f}%  ({ps[0]['anon_kb'] / 1024:.1f}/"
              f"{ps[-1]['anon_kb'] / 1024:.1f})")
    return ok


def reanalyse(path: str, warmup: float) -> int:
    """The RSS and /dev/shm part of the report again, from a ``--json`` file of an earlier run,
    with another warm-up."""
    doc = json.loads(Path(path).read_text())
    samples = doc["samples"]
    killed = doc.get("redis_killed", any(p["name"] == "valkey-server" for s in samples
                                         for p in s["procs"]))
    ok = rss_report(samples, warmup, bool(killed))
    shm = [s["shm_bytes"] / 2**20 for s in samples if s["t"] >= warmup]
    ok &= flat(shm) <= TOLERANCE
    print(f"/dev/shm of the run: spread {100 * flat(shm):.2f}% (the run's own checks after it "
          f"ended are in its original report)")
    print("FLAT (within 5%)" if ok else "NOT FLAT", f"- RSS and /dev/shm of {path}")
    return 0 if ok else 1


# -- main --------------------------------------------------------------------------------------

def flat(values: list[float]) -> float:
    """(max - min) / min of a series (0 when empty)."""
    return (max(values) - min(values)) / min(values) if values and min(values) > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["pipeline", "ingest"], default="pipeline")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default 10 min)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds excluded from the flatness check (default: 10%% of the run, "
                         "at least 30 s)")
    ap.add_argument("--every", type=float, default=5.0, help="sampling interval, seconds")
    ap.add_argument("--clip", default=None,
                    help="video to serve (default: a generated 640x480 25 fps H.264 clip)")
    ap.add_argument("--fps", type=float, default=5.0, help="camera fps sampling (counted fps)")
    ap.add_argument("--random-init", default="ebc-tiny-rn", help="model for --mode pipeline")
    ap.add_argument("--json", default=None, help="write the samples and summary here")
    ap.add_argument("--file-camera", action="store_true",
                    help="pipeline: add a second camera, a file looping in real time")
    ap.add_argument("--redis", action="store_true", help="pipeline: publish to the embedded Redis")
    ap.add_argument("--kill-redis-at", default="", metavar="S1,S2",
                    help="pipeline --redis: SIGKILL the embedded valkey-server at these seconds")
    ap.add_argument("--record", action="store_true",
                    help="pipeline: record every camera (overlay)")
    ap.add_argument("--reanalyse", metavar="JSON", default=None,
                    help="only print the RSS / shm report of an earlier run's --json file "
                         "(with this --warmup)")
    a = ap.parse_args()
    if a.reanalyse:
        return reanalyse(a.reanalyse, a.warmup if a.warmup is not None else 180.0)
    kills = sorted(float(x) for x in a.kill_redis_at.split(",") if x.strip())
    if kills and not (a.redis and a.mode == "pipeline"):
        ap.error("--kill-redis-at needs --redis (pipeline mode)")
    warmup = a.warmup if a.warmup is not None else max(30.0, 0.1 * a.duration)

    tmp = Path(tempfile.mkdtemp(prefix="cs_soak_"))
    if a.clip:
        served = Path(a.clip).resolve()  # its folder is served in place, nothing is copied
        if not served.is_file():
            print(f"clip not found: {a.clip}", file=sys.stderr)
            return 2
    else:
        served = make_clip(tmp / "srv" / "cam.mp4", frames=250, width=640, height=480, fps=25)
    server = RtspServer(served.parent, log_path=None).start()
    url = server.url(served.name)
    print(f"soak: mode={a.mode} duration={a.duration:.0f}s warmup={warmup:.0f}s url={url} "
          f"fps={a.fps} machine={platform.node()} {os.cpu_count()} CPUs")

    t_start = time.time()
    runner: Any
    if a.mode == "pipeline":
        runner, jsonl = start_pipeline(tmp, url, a)
        root_pid, prefix = runner.pid, f"cs_{runner.pid}_"
    else:
        runner, jsonl = IngestOnly(url, a.fps, int(a.duration * 30 * 1.5) + 1000), None
        root_pid, prefix = os.getpid(), runner.prefix
    samples: list[dict[str, Any]] = []
    seen: set[int] = set()  # every process of the run ever sampled: none may be left at the end
    killed: list[tuple[float, int]] = []
    rc = 0
    try:
        while time.time() - t_start < a.duration:
            time.sleep(a.every)
            if a.mode == "pipeline" and runner.poll() is not None:
                print(f"the pipeline exited early with {runner.returncode}; see {tmp}/run.log")
                rc = 1
                break
            if kills and time.time() - t_start >= kills[0]:
                kills.pop(0)
                killed.append((time.time() - t_start, kill_redis(tmp / "run" / "redis")))
                print(f"t={killed[-1][0]:6.0f}s SIGKILL valkey-server pid {killed[-1][1]}",
                      flush=True)
            procs = [i for p in descendants(root_pid) if p != server.pid
                     and (i := proc_info(p)) is not None]
            seen |= {p["pid"] for p in procs if p["pid"] != os.getpid()}
            used, nseg = shm_usage(prefix)
            samples.append({"t": time.time() - t_start, "procs": procs, "shm_bytes": used,
                            "shm_segments": nseg})
            rss = sum(p["rss_kb"] for p in procs) / 1024
            print(f"t={samples[-1]['t']:6.0f}s processes={len(procs)} total RSS {rss:7.1f} MiB "
                  f"/dev/shm {used / 2**20:7.1f} MiB in {nseg} segments", flush=True)
    finally:
        if a.mode == "pipeline":
            runner.send_signal(signal.SIGINT)
            try:
                runner.wait(90)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
        else:
            runner.close()
        server.stop()
    time.sleep(2.0)  # children and the Redis watchdog end within a second of the supervisor
    left, nleft = shm_usage(prefix)
    alive = sorted(p for p in seen if _running(p))

    # -- report --
    ok = rc == 0 and rss_report(samples, warmup, bool(killed))
    after = [s for s in samples if s["t"] >= warmup]
    shm = [s["shm_bytes"] / 2**20 for s in after]
    if shm:
        ok &= flat(shm) <= TOLERANCE
        print(f"/dev/shm of the run: first {shm[0]:.1f} MiB, min {min(shm):.1f}, max "
              f"{max(shm):.1f}, spread {100 * flat(shm):.2f}%; after exit: {left} bytes in "
              f"{nleft} segments")
    ok &= nleft == 0
    print(f"processes of the run still running after it exited: {alive or 'none'} "
          f"(of {len(seen)} seen)")
    ok &= not alive
    t_warm = t_start + warmup
    if a.mode == "pipeline":
        lat, frames, states = pipeline_latencies(jsonl, t_warm)
        print(f"counted frames: {frames}; camera states: {states}")
        ok &= report_run(tmp, runner.returncode, killed, a.record)
    else:
        rec = runner.lat[:min(runner.frames, len(runner.lat))]
        lat = 1000 * rec[rec[:, 0] >= t_warm, 1]
        frames = runner.frames
        print(f"frames read from the ring: {frames}")
    if len(lat):
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"capture -> {'result' if a.mode == 'pipeline' else 'reader'} latency after "
              f"warm-up: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat)} frames")
    else:
        print("no latency samples after warm-up")
        ok = False
    print("FLAT (within 5%)" if ok else "NOT FLAT / FAILED", f"- details in {tmp}")
    if a.json:
        Path(a.json).write_text(json.dumps({"samples": samples, "ok": ok,
                                            "redis_killed": bool(killed)}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
