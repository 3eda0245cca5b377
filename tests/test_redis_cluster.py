"""Publishing to a real 3-node Valkey cluster: per-camera keys share a slot, pipelines work."""

from __future__ import annotations

from _outputs_helpers import make_result

from pipeline.client import CrowdClient
from pipeline.config import RedisConfig
from pipeline.local_cluster import LocalCluster
from pipeline.redis_keys import RedisKeys
from pipeline.schema import validate
from pipeline.sinks.redis_sink import RedisSink


def test_publish_to_cluster(cluster: LocalCluster) -> None:
    url = cluster.url
    cams = ["lobby", "gate 2", "{weird}"]
    sink = RedisSink(RedisConfig(url=url, cluster=True, namespace="cl", heatmap_every_s=0),
                     url)
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
    client = CrowdClient(url, namespace="cl", cluster=True)
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
