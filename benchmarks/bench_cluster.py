"""Redis Cluster sizing by simulation (issue 15): 1,000 cameras at 5 results/s over 50 workers.

A local Valkey cluster (``pipeline.local_cluster``: 3 primaries, 1 replica each) receives what
50 sharded workers would publish: every camera is placed by the real rendezvous hashing
(``pipeline.shard``) and every worker is a real ``RedisSink`` (outage buffer, publisher thread,
pipelined batches split per primary) fed synthetic count results (3 zones, a 1080p frame's
metadata) at 5 per camera per second. The workers run in ``--procs`` processes (the pipeline's
post stage is one process per worker; here several workers share one to fit the machine).

Reported:

1. offered vs delivered messages/s, and the write rate and CPU per primary (``INFO`` deltas);
2. stream memory per entry (``MEMORY USAGE`` of the run's counts streams) and of one stream
   holding a camera-hour (rate x 3600 entries), so the retention ``stream_maxlen`` buys per GB;
   one heatmap key's memory, for the heatmap TTL budget;
3. key balance: cameras and keys per primary, distinct slots;
4. cameras that move when a 51st worker is added (rendezvous: about 1/51 of them).

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_cluster.py [--cameras 1000] [--workers 50]
        [--rate 5] [--seconds 30] [--procs 2] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from engines.density import DensityMap  # noqa: E402
from pipeline.config import RedisConfig  # noqa: E402
from pipeline.local_cluster import LocalCluster  # noqa: E402
from pipeline.redis_keys import RedisKeys  # noqa: E402
from pipeline.results import FrameResult  # noqa: E402
from pipeline.shard import assign, moved  # noqa: E402

NS = "bench"
MAP = (135, 240)  # 1080p at 8-px cells


def camera_names(n: int) -> list[str]:
    return [f"site-{i // 50:02d}/cam-{i:04d}" for i in range(n)]


def template(camera: str) -> FrameResult:
    dens = DensityMap(np.full(MAP, 0.001, np.float32), 8)
    r = FrameResult(camera=camera, frame_index=0, pts=0.0, capture_ts=0.0, count=32.4,
                    raw_count=33.1, density=dens, raw_density=dens, frame_size=(1080, 1920),
                    engine_id="onnx-fp32-0123456789ab", result_ts=0.0)
    r.zone_counts = {"entrance": 4.2, "stairs": 7.9, "platform": 20.3}
    r.zone_density = {"entrance": 0.011, "stairs": 0.020, "platform": 0.034}
    return r


def worker_proc(url: str, shards: dict[int, list[str]], rate: float, seconds: float,
                heatmap_every_s: float, out: Any) -> None:
    """Run the given workers' sinks, writing each camera's results at ``rate`` per second."""
    from pipeline.sinks.redis_sink import RedisSink

    cfg = RedisConfig(url=url, cluster=True, namespace=NS, heatmap_every_s=heatmap_every_s,
                      stream_maxlen=100000, pubsub=True)
    sinks = {w: RedisSink(cfg, url, drain_timeout_s=60, run_id=f"bench-{w}") for w in shards}
    for s in sinks.values():
        s.open()
    results = {c: template(c) for cams in shards.values() for c in cams}
    period = 1.0 / rate
    t0 = time.monotonic()
    tick = 0
    written = 0
    lag = []
    while True:
        due = t0 + tick * period
        now = time.monotonic()
        if due > t0 + seconds:
            break
        if due > now:
            time.sleep(due - now)
        lag.append(max(0.0, time.monotonic() - due))
        wall = time.time()
        for w, cams in shards.items():
            sink = sinks[w]
            for c in cams:
                r = results[c]
                r.frame_index, r.pts, r.capture_ts, r.result_ts = tick, tick * period, wall, wall
                sink.write(r)
                written += 1
        tick += 1
    generated = time.monotonic() - t0
    flushed = all(s.flush(120) for s in sinks.values())
    stats = [s.stats() for s in sinks.values()]
    for s in sinks.values():
        s.close()
    out.put({"written": written, "flushed": flushed, "generated": generated,
             "elapsed": time.monotonic() - t0,
             "published": sum(st["published"] for st in stats),
             "dropped": sum(st["dropped"] for st in stats),
             "failed": sum(st["failed"] for st in stats),
             "lag_p99_ms": float(np.percentile(lag, 99) * 1000) if lag else 0.0})


def primaries_info(cl: LocalCluster) -> dict[int, dict[str, Any]]:
    out = {}
    for i, role in cl.roles().items():
        if role == "master":
            c = cl.client(i)
            info = c.info()
            cmd = c.info("commandstats")
            out[i] = {"xadd": cmd.get("cmdstat_xadd", {}).get("calls", 0),
                      "cmds": info["total_commands_processed"],
                      "cpu": info["used_cpu_sys"] + info["used_cpu_user"],
                      "mem": info["used_memory"], "keys": c.dbsize()}
    return out


def measure_memory(cl: LocalCluster, cams: list[str], sample: int = 50) -> dict[str, float]:
    """Bytes per stream entry (MEMORY USAGE, all samples) over ``sample`` cameras."""
    keys = RedisKeys(NS)
    per_entry = []
    for cam in cams[:sample]:
        node = cl.node_of_key(keys.counts(cam))
        c = cl.client(node)
        n = c.xlen(keys.counts(cam))
        if n:
            per_entry.append(c.memory_usage(keys.counts(cam), samples=0) / n)
    return {"bytes_per_entry": statistics.mean(per_entry)}


def hour_stream_bytes(cl: LocalCluster, rate: float) -> float:
    """Memory of one camera's counts stream holding an hour of results (``rate`` * 3600 entries,
    written by the real sink): the per-camera-hour figure without small-stream overheads."""
    from pipeline.sinks.redis_sink import RedisSink

    n = int(rate * 3600)
    cfg = RedisConfig(url=cl.url, cluster=True, namespace=NS + "hour", heatmap_every_s=3600,
                      stream_maxlen=n, buffer_max_messages=n + 10, pubsub=False)
    sink = RedisSink(cfg, cl.url, run_id="bench-hour")
    sink.open()
    r = template("hour")
    t = time.time() - 3600
    for i in range(n):
        r.frame_index, r.pts, r.capture_ts = i, i / rate, t + i / rate
        r.result_ts = r.capture_ts
        sink.write(r)
    sink.flush(300)
    sink.close()
    key = RedisKeys(NS + "hour").counts("hour")
    c = cl.client(cl.node_of_key(key))
    assert c.xlen(key) >= n * 0.99, c.xlen(key)
    return float(c.memory_usage(key, samples=0))


def heatmap_bytes(cl: LocalCluster) -> dict[str, float]:
    """Memory of one heatmap key as the real sink stores it (PNG of a 1080p map)."""
    from pipeline.sinks.redis_sink import RedisSink

    cfg = RedisConfig(url=cl.url, cluster=True, namespace=NS + "hm", heatmap_every_s=0)
    sink = RedisSink(cfg, cl.url)
    sink.open()
    r = template("heat")
    rng = np.random.default_rng(0)
    r.density = DensityMap((rng.random(MAP, dtype=np.float32) * 0.01).astype(np.float32), 8)
    r.capture_ts = r.result_ts = time.time()
    sink.write(r)
    sink.flush(30)
    sink.close()
    key = RedisKeys(NS + "hm").heatmap("heat", 0)
    c = cl.client(cl.node_of_key(key))
    return {"heatmap_key_bytes": float(c.memory_usage(key, samples=0))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=50)
    ap.add_argument("--rate", type=float, default=5.0, help="results per camera per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--procs", type=int, default=2, help="processes the workers share")
    ap.add_argument("--primaries", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    cams = camera_names(args.cameras)
    table = assign(cams, args.workers)
    per_worker = [len(v) for v in table.values()]
    moves = len(moved(cams, args.workers, args.workers + 1))
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(Path(tmp) / "cl", primaries=args.primaries, replicas=1) as cl:
        keys = RedisKeys(NS)
        cams_per_primary: dict[int, int] = {}
        slots = set()
        asker = cl.client(0)
        for cam in cams:
            slot = int(asker.execute_command("CLUSTER", "KEYSLOT", keys.counts(cam)))
            slots.add(slot)
            p = cl.primary_of_slot(slot)
            cams_per_primary[p] = cams_per_primary.get(p, 0) + 1
        before = primaries_info(cl)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        groups = [dict(list(table.items())[i::args.procs]) for i in range(args.procs)]
        procs = [ctx.Process(target=worker_proc, args=(cl.url, g, args.rate, args.seconds,
                                                       3600.0, out)) for g in groups]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        parts = [out.get(timeout=args.seconds + 600) for _ in procs]
        for p in procs:
            p.join(60)
        wall = time.monotonic() - t0
        after = primaries_info(cl)
        mem = measure_memory(cl, cams)
        hour = hour_stream_bytes(cl, args.rate)
        hm = heatmap_bytes(cl)
        load = os.getloadavg()[0]

    written = sum(p["written"] for p in parts)
    published = sum(p["published"] for p in parts)
    generated = max(p["generated"] for p in parts)  # the writers' loop
    elapsed = max(p["elapsed"] for p in parts)  # the loop and the final flush
    rows = []
    for i in sorted(after):
        b = before.get(i, after[i])
        xadds = after[i]["xadd"] - b["xadd"]
        cpu = after[i]["cpu"] - b["cpu"]
        rows.append({"primary": i, "cameras": cams_per_primary.get(i, 0), "keys": after[i]["keys"],
                     "xadd_per_s": xadds / elapsed,
                     "cmds_per_s": (after[i]["cmds"] - b["cmds"]) / elapsed,
                     "cpu_share": cpu / elapsed,
                     "cpu_us_per_msg": cpu / max(xadds, 1) * 1e6,
                     "mem_mb": after[i]["mem"] / 2**20})
    per_entry = mem["bytes_per_entry"]
    per_cam_hour = hour
    res = {
        "command": " ".join(["benchmarks/bench_cluster.py", *sys.argv[1:]]),
        "machine": f"{platform.node()} {os.cpu_count()} cores, load {load:.1f}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cameras": args.cameras, "workers": args.workers, "rate": args.rate,
        "cameras_per_worker": [min(per_worker), max(per_worker)],
        "offered_per_s": args.cameras * args.rate,
        "written_per_s": written / generated, "delivered_per_s": published / elapsed,
        "generate_s": generated, "deliver_s": elapsed,
        "written": written, "published": published,
        "dropped": sum(p["dropped"] for p in parts), "failed": sum(p["failed"] for p in parts),
        "flushed": all(p["flushed"] for p in parts), "wall_s": wall,
        "writer_lag_p99_ms": max(p["lag_p99_ms"] for p in parts),
        "primaries": rows, "distinct_slots": len(slots),
        "bytes_per_entry": per_entry, "hour_entry_bytes": hour / (args.rate * 3600),
        "mb_per_camera_hour": per_cam_hour / 2**20,
        "camera_hours_per_gb": 2**30 / per_cam_hour,
        "heatmap_key_bytes": hm["heatmap_key_bytes"],
        "moved_when_adding_a_worker": moves,
    }
    if args.markdown:
        print(markdown(res))
    else:
        print(json.dumps(res, indent=2))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [f"`nice -n 10 .venv/bin/python {r['command']}` -- {r['machine']}, {r['date']}", "",
             "| measure | result |", "|---|---|",
             f"| cameras / workers (rendezvous) | {r['cameras']} / {r['workers']}, "
             f"{r['cameras_per_worker'][0]}-{r['cameras_per_worker'][1]} cameras per worker |",
             f"| offered / written / delivered | {r['offered_per_s']:.0f} / "
             f"{r['written_per_s']:.0f} / {r['delivered_per_s']:.0f} messages/s "
             f"({r['published']} of {r['written']} delivered, {r['dropped']} dropped, "
             f"{r['failed']} refused) |",
             f"| writing / delivering took | {r['generate_s']:.1f} s / {r['deliver_s']:.1f} s "
             f"(writer tick lag p99 {r['writer_lag_p99_ms']:.1f} ms) |",
             f"| distinct slots of {r['cameras']} cameras | {r['distinct_slots']} |",
             f"| stream entry (count.v1, 3 zones), in the run's short streams / in an "
             f"hour-long stream | {r['bytes_per_entry']:.0f} / {r['hour_entry_bytes']:.0f} "
             "bytes |",
             f"| stream memory per camera-hour at {r['rate']:g}/s (hour-long stream) | "
             f"{r['mb_per_camera_hour']:.1f} MiB ({r['camera_hours_per_gb']:.0f} camera-hours per "
             "GiB) |",
             f"| one heatmap key (1080p map, PNG) | {r['heatmap_key_bytes'] / 1024:.1f} KiB |",
             f"| cameras moved when worker {r['workers'] + 1} is added | "
             f"{r['moved_when_adding_a_worker']} of {r['cameras']} "
             f"(1/{r['workers'] + 1} = {r['cameras'] / (r['workers'] + 1):.1f}) |", "",
             "| primary | cameras | keys | XADD/s | commands/s | CPU (cores) | CPU per message "
             "| used memory |", "|---|---|---|---|---|---|---|---|"]
    for p in r["primaries"]:
        lines.append(f"| {p['primary']} | {p['cameras']} | {p['keys']} | {p['xadd_per_s']:.0f} | "
                     f"{p['cmds_per_s']:.0f} | {p['cpu_share']:.2f} | "
                     f"{p['cpu_us_per_msg']:.0f} us | {p['mem_mb']:.1f} MiB |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
