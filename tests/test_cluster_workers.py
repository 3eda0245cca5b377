"""Sharded workers on a real Redis Cluster, end to end: 3 ``crowdstream run --shard I/3`` processes
over 9 file cameras (paced like live cameras, tiny random-init torch model, 1 thread each) on a
3-primary Valkey cluster with one replica per primary.

One scenario, checked as it goes and at the end:

* every camera is counted by exactly one worker (its shard), every frame exactly once, in order;
* killing one worker (SIGKILL to its whole process group, as a node loss does to a pod) stops
  only its cameras; started again with the same command it resumes them after the last frame
  index in Redis, so each camera's indices stay monotonic and none is missing or repeated;
* killing a cluster primary (its replica takes over, the node comes back as a replica) while all
  workers publish loses nothing acknowledged: what each worker counted (its JSON lines) is what
  Redis holds for it, and its publisher reports exactly what it delivered and dropped (0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from rtsp_server import make_clip

from pipeline.client import CrowdClient
from pipeline.local_cluster import LocalCluster
from pipeline.redis_keys import RedisKeys
from pipeline.shard import shard_of

REPO = Path(__file__).resolve().parent.parent
SHARDS = 3
PER_SHARD = 3
FRAMES = 180  # per clip, released at FPS: 36 s of "live" video per camera
FPS = 5
NS = "cw"

pytestmark = pytest.mark.slow


def pick_cameras() -> dict[int, list[str]]:
    """Three camera names per shard (the first ones rendezvous hashing gives each shard)."""
    out: dict[int, list[str]] = {s: [] for s in range(SHARDS)}
    k = 0
    while any(len(v) < PER_SHARD for v in out.values()):
        name = f"cam-{k}"
        s = shard_of(name, SHARDS)
        if len(out[s]) < PER_SHARD:
            out[s].append(name)
        k += 1
    return out


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               procs: list[subprocess.Popen[bytes]] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs or []:
            assert p.poll() is None, f"a worker exited early ({p.returncode}) while waiting: {what}"
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.25)


class Workers:
    """The worker processes of the scenario: one config per worker (its own run_dir, as a pod
    has its own disk), the same cameras and Redis in each."""

    def __init__(self, tmp: Path, url: str, cameras: list[Path]) -> None:
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts: Counter[int] = Counter()
        self.configs = {}
        for i in range(SHARDS):
            doc: dict[str, Any] = {
                "run_dir": str(tmp / f"w{i}"),
                "jsonl": "counts.jsonl",
                "model": {"random_init": "ebc-tiny-rn", "backend": "torch", "batch": 4},
                "metrics": {"port": None, "status_every_s": 5},
                "redis": {"url": url, "cluster": True, "namespace": NS, "heatmap_every_s": 2,
                          "wait_replicas": 1, "wait_timeout_s": 1.0, "connect_timeout_s": 1.0},
                "runtime": {"torch_threads": 1, "frame_slots": 4, "drain_timeout_s": 60},
                "defaults": {"realtime": True, "queue_policy": "lossless"},
                "cameras": {p.stem: str(p) for p in cameras},
            }
            self.configs[i] = tmp / f"worker{i}.yaml"
            self.configs[i].write_text(yaml.safe_dump(doc))

    def start(self, i: int) -> None:
        self.starts[i] += 1
        log = open(self.tmp / f"worker{i}-{self.starts[i]}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "CROWDSTREAM_LOG_JSON": "1", "PYTHONPATH": str(REPO)}
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", str(self.configs[i]), "--shard",
             f"{i}/{SHARDS}", "--quiet"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        log.close()

    def kill(self, i: int) -> None:
        """SIGKILL the worker's whole process group: supervisor and every child at once."""
        p = self.procs[i]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    def logs(self, i: int, start: int) -> list[dict[str, Any]]:
        out = []
        for line in (self.tmp / f"worker{i}-{start}.log").read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


def jsonl_counts(run_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """run_id -> the (camera, frame_index) of every count line a worker wrote."""
    out: dict[str, list[tuple[str, int]]] = {}
    for f in sorted(run_dir.rglob("*.jsonl")):
        if f.is_symlink():  # counts.jsonl names the latest run's file: read each file once
            continue
        for line in f.read_text().splitlines():
            doc = json.loads(line)
            if doc["type"] == "count":
                out.setdefault(doc["run_id"], []).append((doc["camera"], doc["frame_index"]))
    return out



def test_sharded_workers_on_a_cluster_survive_a_worker_kill_and_a_primary_failover(
        tmp_path: Path, cluster: LocalCluster) -> None:
    shards = pick_cameras()
    owner = {cam: s for s, cams in shards.items() for cam in cams}
    clips = [make_clip(tmp_path / "clips" / f"{cam}.mp4", frames=FRAMES, width=160, height=120,
                       fps=FPS, gop=FPS) for cam in sorted(owner)]
    workers = Workers(tmp_path, cluster.url, clips)
    client = CrowdClient(cluster.url, namespace=NS)
    assert client.cluster

    def progress() -> dict[str, int]:
        return {cam: client.last_frame_index(cam) for cam in owner}

    try:
        for i in range(SHARDS):
            workers.start(i)
        running = list(workers.procs.values())
        wait_until(lambda: min(progress().values()) >= 3, 240,
                   "every camera publishing", running)

        # -- a worker dies: only its cameras stop ------------------------------------------
        workers.kill(1)
        at_kill = progress()
        time.sleep(3.0)
        later = progress()
        for cam, s in owner.items():
            if s == 1:
                assert later[cam] == at_kill[cam], f"{cam} advanced with its worker dead"
            else:
                assert later[cam] > at_kill[cam], f"{cam} stopped when worker 1 died"

        # -- started again: it takes back exactly its cameras, after what Redis holds --------
        workers.start(1)
        wait_until(lambda: all(progress()[c] > at_kill[c] + 2 for c in shards[1]), 240,
                   "the restarted worker publishing", list(workers.procs.values()))

        # -- a primary dies while every worker publishes: its replica takes over ------------
        victim = max(range(3), key=lambda n: sum(
            cluster.node_of_key(RedisKeys(NS).counts(c)) == n for c in owner))
        before = progress()
        served = cluster.kill(victim)
        cluster.wait_failover(served, timeout=30)
        cluster.restart(victim, timeout=60)  # back as a replica, as a restarted pod would
        wait_until(lambda: all(progress()[c] > before[c] for c in owner), 120,
                   "every camera publishing after the failover", list(workers.procs.values()))
        assert any(before[c] < FRAMES - 1 for c in owner), "the failover came after the clips"

        for i, p in workers.procs.items():
            assert p.wait(240) == 0, f"worker {i} exited {p.returncode}"
    finally:
        workers.stop_all()

    # -- every frame of every camera exactly once, in order, by the worker of its shard ------
    runs_of: dict[str, set[str]] = {}
    redis_counts: dict[str, list[tuple[str, int]]] = {}
    for cam in owner:
        entries = [m for _, m in client.counts(cam)]
        assert [m["frame_index"] for m in entries] == list(range(FRAMES)), cam
        runs_of[cam] = {m["run_id"] for m in entries}
        for m in entries:
            redis_counts.setdefault(m["run_id"], []).append((cam, m["frame_index"]))
    for s, cams in shards.items():
        runs = {r for c in cams for r in runs_of[c]}
        assert len(runs) == (2 if s == 1 else 1), (s, runs)  # worker 1 ran twice
        others = {r for c, o in owner.items() if o != s for r in runs_of[c]}
        assert not runs & others, f"a run of shard {s} published another shard's camera"

    # -- what each worker counted is what Redis holds for it; its publisher accounts exactly --
    run_of = {(i, n): next(e["run_id"] for e in workers.logs(i, n) if "run_id" in e)
              for i in range(SHARDS) for n in range(1, workers.starts[i] + 1)}
    killed = run_of[(1, 1)]
    for i in range(SHARDS):
        counted = jsonl_counts(tmp_path / f"w{i}")
        assert set(counted) == {run_of[(i, n)] for n in range(1, workers.starts[i] + 1)}
        for run_id, frames in counted.items():
            stored = sorted(redis_counts.get(run_id, []))
            if run_id == killed:  # SIGKILL: what reached Redis is part of what it counted
                assert set(stored) <= set(frames)
                continue
            assert stored == sorted(frames), f"worker {i} run {run_id}: Redis != what it counted"
        last = run_of[(i, workers.starts[i])]
        closed = [e for e in workers.logs(i, workers.starts[i])
                  if e.get("logger") == "crowdstream.redis" and e["event"].startswith("closed")]
        assert len(closed) == 1, f"worker {i}: no publisher summary"
        status = sum(1 for c in shards[i] for _, m in client.status(c) if m.get("run_id") == last)
        assert closed[0]["dropped"] == 0 and closed[0]["refused"] == 0
        assert closed[0]["published"] == len(redis_counts[last]) + status
    client.close()
