"""A real 3-primary Valkey cluster with one replica per primary: the publisher through a primary
failover (SIGKILL, the replica takes over), and the reader (``CrowdClient``) across the cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _outputs_helpers import make_result

from pipeline.client import CrowdClient, is_cluster
from pipeline.config import RedisConfig
from pipeline.events import CameraStatus
from pipeline.local_cluster import LocalCluster
from pipeline.redis_keys import RedisKeys
from pipeline.sinks.redis_sink import RedisSink

REPO = Path(__file__).resolve().parent.parent
CAMERAS = [f"door-{i}" for i in range(6)]



def test_local_cluster_shape(cluster: LocalCluster) -> None:
    roles = cluster.roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3
    assert is_cluster(cluster.url) and not is_cluster("redis://127.0.0.1:1")
    # the {camera} hash tag: the cameras spread over the primaries
    keys = RedisKeys("fo")
    assert len({cluster.node_of_key(keys.counts(c)) for c in CAMERAS}) >= 2


def test_primary_failover_loses_nothing_acknowledged_and_counts_every_drop(
        cluster: LocalCluster) -> None:
    """Writes go on while a primary is SIGKILLed: its replica takes over, the killed node comes
    back as a replica. With ``wait_replicas: 1`` every message counted as published is in the
    cluster afterwards; the small buffer overflows during the outage and every message is
    either stored or counted as dropped, exactly."""
    cfg = RedisConfig(url=cluster.url, cluster=True, namespace="fo", heatmap_every_s=0.2,
                      wait_replicas=1, wait_timeout_s=0.5, buffer_max_messages=300)
    sink = RedisSink(cfg, cluster.url, drain_timeout_s=30)
    sink.open()
    written = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal written
        i = 0
        while not stop.is_set():
            for cam in CAMERAS:
                sink.write(make_result(cam, i, shape=(6, 8)))
                written += 1
            i += 1
            time.sleep(0.02)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        victim = cluster.node_of_key(RedisKeys("fo").counts(CAMERAS[0]))
        served = cluster.kill(victim)
        cluster.wait_failover(served, timeout=30)
        time.sleep(1.0)  # the promoted replica has no replica of its own: nothing is acknowledged
        cluster.restart(victim, timeout=60)  # back as a replica (a restarted pod)
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(10)
    assert sink.flush(60)
    st = sink.stats()
    sink.close()
    client = CrowdClient(cluster.url, namespace="fo")  # cluster detected from the server
    assert client.cluster
    stored = {cam: [m["frame_index"] for _, m in client.counts(cam)] for cam in CAMERAS}
    client.close()
    total = sum(len(v) for v in stored.values())
    for cam, idx in stored.items():
        assert idx == sorted(set(idx)), f"{cam}: duplicates or out of order"
    assert st["failed"] == 0
    assert st["published"] == total, "an acknowledged message is missing after the failover"
    assert total + st["dropped"] == written, "a message was neither stored nor counted dropped"
    assert st["dropped"] > 0, "the outage should have overflowed the 300-message buffer"
    assert st["reconnects"] >= 1


def test_client_and_follow_across_the_cluster(cluster: LocalCluster) -> None:
    """Latest, history, heatmaps, the camera set, and a live follow with status and alerts
    (another slot) -- the follow keeps going through a failover of the camera's primary."""
    cfg = RedisConfig(url=cluster.url, cluster=True, namespace="rd", heatmap_every_s=0)
    sink = RedisSink(cfg, cluster.url, drain_timeout_s=30)
    sink.open()
    client = CrowdClient(cluster.url, namespace="rd")
    cam = CAMERAS[1]
    got: list[dict] = []

    def follow() -> None:
        for batch in client.follow_batches(cam, last_id="$", block_ms=200, with_status=True,
                                           with_alerts=True):
            got.extend(m for _, m in batch)
            if any(m["schema"] == "crowdstream.status.v1" and m["state"] == "finished"
                   for _, m in batch):
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(0.5)
    sink.write_status(CameraStatus(cam, "online", "first frame", time.time()))
    for i in range(5):
        sink.write(make_result(cam, i, shape=(6, 8)))
    sink.publish_alert({"schema": "crowdstream.alert.v1", "event": "start", "alert_id": "a",
                        "rule": "r", "camera": cam, "zone": None, "metric": "count",
                        "severity": "info", "threshold": 1.0, "clear": 1.0, "before": 0.0,
                        "after": 2.0, "started_ts": 1.0, "ts": 1.0, "frame_index": 4})
    assert sink.flush(20)
    served = cluster.kill(cluster.node_of_key(RedisKeys("rd").counts(cam)))
    cluster.wait_failover(served, timeout=30)
    for i in range(5, 10):
        sink.write(make_result(cam, i, shape=(6, 8)))
    sink.write_status(CameraStatus(cam, "finished", "end of file", time.time()))
    assert sink.flush(60)
    sink.close()
    reader.join(60)
    assert not reader.is_alive(), f"follow did not see the end; got {len(got)} messages"
    counts = [m["frame_index"] for m in got if m["schema"] == "crowdstream.count.v1"]
    assert counts == list(range(10))
    assert [m["alert_id"] for m in got if m["schema"] == "crowdstream.alert.v1"] == ["a"]
    assert client.latest(cam)["frame_index"] == 9 and client.last_frame_index(cam) == 9
    assert client.heatmap(cam).meta["frame_index"] == 9
    assert client.cameras() == [cam] and client.last_frame_index("nobody") == -1
    client.close()
    # the watch command, given any live node's URL, finds the cluster and replays it all
    live = next(u for i, u in enumerate(cluster.urls) if cluster.alive(i))
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "watch", cam, "--url",
                        live, "--namespace", "rd", "--json", "--from-start"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    msgs = [json.loads(line) for line in p.stdout.splitlines()]
    assert [m["frame_index"] for m in msgs if m["schema"] == "crowdstream.count.v1"] == \
        list(range(10))
    assert [m["alert_id"] for m in msgs if m["schema"] == "crowdstream.alert.v1"] == ["a"]
    assert any(m["schema"] == "crowdstream.status.v1" and m["state"] == "finished" for m in msgs)
    assert "is finished" in p.stderr  # the watch ended by itself on the camera's end
