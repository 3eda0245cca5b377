"""One encoder for every output: the Redis streams and the JSON-lines file carry the same
envelopes (validated against pipeline/schema), heatmaps decode to the published count, and JSON
lines reach the file as they are written (a crash loses none written before it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _outputs_helpers import make_result, start_server

from pipeline.client import CrowdClient
from pipeline.config import RedisConfig
from pipeline.events import CameraStatus
from pipeline.redis_embedded import EmbeddedRedis
from pipeline.schema import COUNT_SCHEMA, STATUS_SCHEMA, validate
from pipeline.sinks.jsonl import JsonlSink
from pipeline.sinks.redis_sink import RedisSink

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = start_server(tmp_path_factory.mktemp("valkey"))
    yield srv
    srv.stop()


def crowd_map(seed: int, shape: tuple[int, int], people: int = 40) -> np.ndarray:
    """A density map like a model's: one unit-mass Gaussian per person (sigma 0.7-3 cells), so
    most cells hold small tails far below the peak (what an 8-bit PNG rounded away)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.zeros(shape, np.float64)
    for _ in range(people):
        cy, cx, s = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(0.7, 3.0)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        d += g / g.sum()
    return d.astype(np.float32)


def test_redis_and_json_lines_carry_the_same_envelopes(server: EmbeddedRedis,
                                                       tmp_path: Path) -> None:
    cfg = RedisConfig(url=server.url, namespace="enc", heatmap_every_s=3600)
    redis_sink = RedisSink(cfg, server.url, run_id="run-1")
    jsonl_sink = JsonlSink(str(tmp_path / "counts.jsonl"), run_id="run-1")
    sinks = [redis_sink, jsonl_sink]
    for s in sinks:
        s.open()
    statuses = [CameraStatus("hall", "online", "first frame", 1.7e9),
                CameraStatus("hall", "finished", "end of file", 1.7e9 + 9)]
    for s in sinks:
        s.write_status(statuses[0])
    for i in range(5):
        r = make_result("hall", i, ts=1.7e9 + i)
        r.zone_counts, r.zone_density = {"stage": 2.5, "door": 1.0}, {"stage": 0.1, "door": 0.05}
        r.zone_density_m2, r.density_m2 = {"stage": 0.75}, 0.4
        for s in sinks:
            s.write(r)
    for s in sinks:
        s.write_status(statuses[1])
    assert redis_sink.flush()
    for s in sinks:
        s.close()

    client = CrowdClient(server.url, namespace="enc")
    from_redis = [m for _, m in client.counts("hall")] + [m for _, m in client.status("hall")]
    lines = [json.loads(x) for x in (tmp_path / "counts.jsonl").read_text().splitlines()]
    from_jsonl = [m for m in lines if m["type"] == "count"] + \
        [m for m in lines if m["type"] == "status"]
    assert len(from_redis) == len(from_jsonl) == 7
    for red, js in zip(from_redis, from_jsonl, strict=True):
        validate(red)
        validate(js)
        assert js["type"] == {COUNT_SCHEMA: "count", STATUS_SCHEMA: "status"}[js["schema"]]
        assert red["run_id"] == js["run_id"] == "run-1"
        # the same fields with the same values; only when and where it was handed over differ
        differ = {"publish_ts", "heatmap"}
        assert {k: v for k, v in red.items() if k not in differ} == \
            {k: v for k, v in js.items() if k not in differ | {"type"}}
    count = from_jsonl[0]
    assert count["zones"] == {"stage": {"count": 2.5, "density": 0.1, "density_m2": 0.75},
                              "door": {"count": 1.0, "density": 0.05}}
    assert count["heatmap"] is None and from_redis[0]["heatmap"] is not None
    assert count["frame_size"] == [288, 512] and count["cell_pixels"] == 8.0
    assert count["latency_ms"] == 0.0  # make_result: result_ts == capture_ts
    client.close()


@pytest.mark.parametrize("fmt", ["png", "float16"])
def test_heatmaps_decode_to_the_published_count(server: EmbeddedRedis, fmt: str) -> None:
    """The decoded heatmap sums to the envelope's count within 0.1 % (the 8-bit PNG this
    replaced lost 0.5-2.3 %: cells below half a grey level became 0)."""
    cfg = RedisConfig(url=server.url, namespace=f"hm-{fmt}", heatmap_every_s=0.0,
                      heatmap_format=fmt)
    sink = RedisSink(cfg, server.url)
    sink.open()
    for i in range(4):
        r = make_result("sq", i, shape=(135, 240))  # 1080p at 8-pixel cells: summed 2x2 to fit
        r.density.map[:] = crowd_map(i, (135, 240), people=10 + 30 * i)
        r.count = r.density.count
        sink.write(r)
    assert sink.flush()
    sink.close()
    client = CrowdClient(server.url, namespace=f"hm-{fmt}")
    msgs = [m for _, m in client.counts("sq")]
    assert len(msgs) == 4
    for m in msgs:
        hm = client.heatmap(m["heatmap"]["key"])
        assert hm is not None and hm.density.shape == (68, 120)
        assert hm.count == pytest.approx(m["count"], rel=1e-3)
        assert hm.meta["count"] == pytest.approx(m["count"], rel=1e-6)
    client.close()


CRASH = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from _outputs_helpers import make_result
from pipeline.events import CameraStatus
from pipeline.sinks.jsonl import JsonlSink
sink = JsonlSink({path!r})
sink.open()
sink.write_status(CameraStatus("c", "online", "first frame", time.time()))
for i in range(7):
    sink.write(make_result("c", i))
os.kill(os.getpid(), signal.SIGKILL)   # a post-process crash: no close(), no flush at exit
"""


def test_json_lines_written_before_a_crash_are_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "counts.jsonl"
    code = CRASH.format(tests=str(REPO / "tests"), path=str(path))
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == -9, p.stderr
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [m["type"] for m in lines] == ["status"] + ["count"] * 7
    assert [m["frame_index"] for m in lines[1:]] == list(range(7))
    for m in lines:
        validate(m)


def test_status_envelope_keeps_the_camera_status(tmp_path: Path) -> None:
    sink = JsonlSink(str(tmp_path / "s.jsonl"))
    sink.open()
    sink.write_status(CameraStatus("gate", "offline", "stopped", 12.5))
    sink.close()
    (line,) = (tmp_path / "s.jsonl").read_text().splitlines()
    assert json.loads(line) == {"type": "status", "schema": STATUS_SCHEMA, "camera": "gate",
                                "state": "offline", "reason": "stopped", "ts": 12.5}


def test_json_lines_are_one_file_per_run_behind_a_stable_link(tmp_path: Path) -> None:
    """With a run id every run writes its own ``counts-<run_id>.jsonl`` (the id in every record)
    and ``counts.jsonl`` is a symlink to the newest; a file written before runs had their own is
    kept, renamed."""
    path = tmp_path / "counts.jsonl"
    path.write_text('{"type":"count","frame_index":0}\n')  # appended by an older version
    for run_id, frames in (("r1", 3), ("r2", 2)):
        sink = JsonlSink(str(path), run_id=run_id)
        sink.open()
        sink.write_status(CameraStatus("c", "online", "first frame", time.time()))
        for i in range(frames):
            sink.write(make_result("c", i))
        sink.close()
    assert path.is_symlink() and os.readlink(path) == "counts-r2.jsonl"
    r1 = [json.loads(x) for x in (tmp_path / "counts-r1.jsonl").read_text().splitlines()]
    r2 = [json.loads(x) for x in path.read_text().splitlines()]
    assert (len(r1), len(r2)) == (4, 3)
    assert {m["run_id"] for m in r1} == {"r1"} and {m["run_id"] for m in r2} == {"r2"}
    assert (tmp_path / "counts-before-r1.jsonl").read_text().count("\n") == 1
