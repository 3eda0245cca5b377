"""The Redis sink against a real server (the embedded valkey): schema, MAXLEN, outage, drops."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from _outputs_helpers import make_result, start_server

from pipeline.client import CrowdClient
from pipeline.config import RedisConfig
from pipeline.events import CameraStatus
from pipeline.heatmaps import downscale_sum
from pipeline.redis_embedded import EmbeddedRedis, connect_hint, find_running
from pipeline.schema import validate
from pipeline.sinks.redis_sink import RedisSink


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = start_server(tmp_path_factory.mktemp("valkey"))
    yield srv
    srv.stop()


def wait_for(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_embedded_server_is_found_and_hint(server: EmbeddedRedis) -> None:
    import os

    assert find_running(server.data_dir) == server.url
    # its own session: a terminal's Ctrl-C (SIGINT to our process group) does not reach it
    assert os.getsid(server.pid) == server.pid != os.getsid(0)
    # the hint never shows the password: read from the run's file, or asked for
    assert connect_hint(server.url, server.password_file) == \
        f'REDISCLI_AUTH="$(cat {server.password_file})" redis-cli -h 127.0.0.1 -p {server.port}'
    assert connect_hint(server.url) == f"redis-cli -h 127.0.0.1 -p {server.port} --askpass"
    assert connect_hint("rediss://h:7000") == "redis-cli -h h -p 7000 --tls"


def test_envelopes_validate_and_heatmaps_roundtrip(server: EmbeddedRedis) -> None:
    cfg = RedisConfig(url=server.url, namespace="t1", heatmap_every_s=0.0, heatmap_max_side=40)
    client = CrowdClient(server.url, namespace="t1")
    sub = client.redis.pubsub()
    sub.subscribe(client.keys.live("lobby 1"))
    sub.get_message(timeout=1.0)  # subscribe confirmation
    sink = RedisSink(cfg, cfg.url)
    sink.open()
    sink.write_status(CameraStatus("lobby 1", "online", "first frame", time.time()))
    results = []
    for i in range(20):
        r = make_result("lobby 1", i)
        r.zone_counts = {"door": 3.5}
        r.zone_density = {"door": 0.25}
        r.zone_density_m2 = {"door": 1.25}
        r.density_m2 = 0.8
        results.append(r)
        sink.write(r)
    assert sink.flush(10)
    assert sink.stats()["published"] == 21 and sink.dropped == 0
    entries = client.counts("lobby 1")
    assert [m["frame_index"] for _, m in entries] == list(range(20))
    for (_, m), r in zip(entries, results, strict=True):
        validate(m)
        assert m["zones"]["door"] == {"count": 3.5, "density": 0.25, "density_m2": 1.25}
        assert m["count"] == pytest.approx(r.count) and m["engine_id"] == "test-engine"
        assert m["capture_ts"] <= m["publish_ts"]
    # every frame got a heatmap at heatmap_every_s=0; 36x64 is summed down 2x2 to 18x32
    hm_ref = entries[-1][1]["heatmap"]
    assert hm_ref is not None
    assert 0 < client.redis.ttl(hm_ref["key"]) <= cfg.heatmap_ttl_s
    hm = client.heatmap(hm_ref["key"])
    assert hm is not None
    validate(hm.meta)  # every stored field, parsed back to its type
    assert hm is not None and hm.density.shape == (18, 32) and hm.meta["cell_pixels"] == 16.0
    expect, _ = downscale_sum(results[-1].density.map, 40)
    # sum-preserving rounding: each cell within one 16-bit level, the sum within half a level
    assert hm.meta["bits"] == 16
    np.testing.assert_allclose(hm.density, expect, atol=hm.meta["scale"] + 1e-6)
    assert hm.count == pytest.approx(results[-1].count, rel=1e-3)
    assert client.heatmap("lobby 1").meta["frame_index"] == 19
    # latest-state hash, status stream, camera set, pub/sub notifications
    latest = client.latest("lobby 1")
    assert latest["frame_index"] == 19 and latest["status"] == "online"
    (_, st), = client.status("lobby 1")
    validate(st)
    assert client.cameras() == ["lobby 1"]
    assert client.keys.counts("lobby 1") == "t1:{lobby 1}:counts"
    notes = []
    while (msg := sub.get_message(timeout=0.5)) is not None:
        notes.append(json.loads(msg["data"]))
    assert len(notes) == 21
    for n in notes:
        validate(n)
        assert len(json.dumps(n)) < 400  # small notifications only, never blobs
    sink.close()
    client.close()


def test_float16_heatmaps(server: EmbeddedRedis) -> None:
    cfg = RedisConfig(url=server.url, namespace="t2", heatmap_format="float16",
                      heatmap_every_s=3600)
    sink = RedisSink(cfg, cfg.url)
    sink.open()
    rs = [make_result("c", i) for i in range(3)]
    for r in rs:
        sink.write(r)
    assert sink.flush()
    client = CrowdClient(server.url, namespace="t2")
    msgs = [m for _, m in client.counts("c")]
    assert [m["heatmap"] is not None for m in msgs] == [True, False, False]  # rate-limited
    hm = client.heatmap(msgs[0]["heatmap"]["key"])
    np.testing.assert_allclose(hm.density, rs[0].density.map, rtol=1e-3, atol=1e-4)
    sink.close()


def test_stream_stays_within_maxlen(server: EmbeddedRedis) -> None:
    cfg = RedisConfig(url=server.url, namespace="t3", stream_maxlen=50, heatmap_every_s=3600)
    sink = RedisSink(cfg, cfg.url)
    sink.open()
    for i in range(1000):
        sink.write(make_result("m", i))
    assert sink.flush()
    client = CrowdClient(server.url, namespace="t3")
    n = client.redis.xlen(client.keys.counts("m"))
    # MAXLEN ~ trims whole radix-tree nodes (stream-node-max-entries = 100)
    assert 50 <= n <= 50 + 100
    assert client.last_counts("m", 1)[0][1]["frame_index"] == 999
    sink.close()


def test_unreachable_server_drops_oldest_exactly() -> None:
    cfg = RedisConfig(url="redis://127.0.0.1:1", namespace="t4", buffer_max_messages=30,
                      connect_timeout_s=0.2)
    sink = RedisSink(cfg, cfg.url, drain_timeout_s=0.5)
    sink.open()
    t0 = time.perf_counter()
    for i in range(100):
        sink.write(make_result("x", i))
    assert time.perf_counter() - t0 < 1.0  # counting never waits on Redis
    assert sink.dropped == 70 and sink.stats()["pending"] == 30
    sink.close()
    assert sink.dropped == 100 and sink.published == 0


def test_outage_mid_run_resumes_and_counts_drops_exactly(tmp_path) -> None:
    srv = EmbeddedRedis(tmp_path / "redis")
    srv.start()
    port = srv.port
    cfg = RedisConfig(url=srv.url, namespace="t5", buffer_max_messages=40, batch_max=8,
                      heatmap_every_s=3600, connect_timeout_s=0.5)
    sink = RedisSink(cfg, cfg.url)
    sink.open()
    n_before, n_during, n_after = 60, 150, 40
    i = 0
    for _ in range(n_before):
        sink.write(make_result("door", i))
        i += 1
        time.sleep(0.001)
    assert sink.flush()
    srv.stop()  # graceful: the append-only file keeps what was delivered
    for _ in range(n_during):
        sink.write(make_result("door", i))
        i += 1
        time.sleep(0.002)
    assert wait_for(lambda: not sink.connected)
    assert sink.dropped >= n_during - cfg.buffer_max_messages - cfg.batch_max
    srv2 = EmbeddedRedis(tmp_path / "redis", port=port)
    srv2.start()
    try:
        assert wait_for(lambda: sink.connected, 15)
        for _ in range(n_after):
            sink.write(make_result("door", i))
            i += 1
        assert sink.flush(15)
        client = CrowdClient(srv2.url, namespace="t5")
        got = [m["frame_index"] for _, m in client.counts("door")]
        assert got == sorted(set(got)), "entries out of order or duplicated"
        missing = set(range(i)) - set(got)
        assert len(missing) == sink.dropped > 0
        assert sink.published == len(got) and sink.reconnects == 1
        # the latest-state hash says how many messages the publisher's buffer dropped
        latest = client.latest("door")
        assert latest["publish_dropped_total"] == sink.dropped and "dropped_total" not in latest
        assert got[-n_after:] == list(range(i - n_after, i))  # publishing resumed
        # the oldest were dropped: everything after the gap arrived
        assert min(missing) >= n_before - cfg.batch_max
        sink.close()
        client.close()
    finally:
        srv2.stop()


class _CuttingProxy:
    """TCP proxy to the real server that, when armed, forwards the next XADD request and then
    cuts the connection before the reply comes back: the server applied the writes, the client
    cannot know."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target = target_port
        self.armed = False
        self.cuts = 0
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            state = {"cut": False}
            threading.Thread(target=self._pump, args=(c, s, True, state), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, False, state), daemon=True).start()

    def _pump(self, src, dst, upstream: bool, state: dict) -> None:
        try:
            while data := src.recv(65536):
                if not upstream:
                    if not state["cut"]:  # replies after the cut never reach the client
                        dst.sendall(data)
                    continue
                cut = self.armed and b"XADD" in data.upper()
                if cut:
                    self.armed = False
                    state["cut"] = True
                dst.sendall(data)
                if cut:
                    self.cuts += 1
                    time.sleep(0.2)  # let the server apply the batch
                    src.close()
                    dst.close()
                    return
        except OSError:
            pass
        finally:
            for sk in (src, dst):
                try:
                    sk.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.lsock.close()


def test_lost_reply_is_resent_without_duplicates(server: EmbeddedRedis) -> None:
    proxy = _CuttingProxy(server.port)
    cfg = RedisConfig(url=f"redis://:{server.password}@127.0.0.1:{proxy.port}", namespace="t6",
                      heatmap_every_s=3600)
    sink = RedisSink(cfg, cfg.url)
    sink.open()
    for i in range(10):
        sink.write(make_result("p", i))
    assert sink.flush()
    proxy.armed = True
    for i in range(10, 30):
        sink.write(make_result("p", i))
    assert wait_for(lambda: proxy.cuts == 1)
    assert sink.flush(15)
    client = CrowdClient(server.url, namespace="t6")
    got = [m["frame_index"] for _, m in client.counts("p")]
    assert got == list(range(30))  # nothing lost, nothing twice
    st = sink.stats()
    assert st["duplicates"] >= 1 and st["published"] == 30 and st["dropped"] == 0
    assert st["reconnects"] == 1
    sink.close()
    proxy.close()


def test_embedded_restart_keeps_port_and_data(tmp_path) -> None:
    from pipeline.redis_embedded import ensure_embedded

    url, srv = ensure_embedded(tmp_path / "redis", announce=False)
    assert srv is not None
    again, none = ensure_embedded(tmp_path / "redis", announce=False)
    assert again == url and none is None  # a second process of the run reuses it
    CrowdClient(url).redis.set("k", "v")
    srv.stop()
    assert find_running(tmp_path / "redis") is None
    url2, srv2 = ensure_embedded(tmp_path / "redis", announce=False)
    try:
        assert url2 == url  # same address for clients after a restart
        assert CrowdClient(url2).redis.get("k") == b"v"  # append-only file kept the data
    finally:
        srv2.stop()
