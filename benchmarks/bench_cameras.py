"""Benchmark: pipeline throughput against the number of cameras (1, 2, 4, 8 copies of a clip).

Each run is the real pipeline (``Supervisor``) on N cameras that are all the same file (the demo
clip, Mall frames 801-1100 at 640x480, by default), lossless (every frame counted), with the
shipped demo model, one after the other in this one process. Per N: aggregate frames/s (every
camera's counted frames over the span from the first counted frame's capture to the last
result, as the run's summary line computes it), frames/s per camera, batch fill (tiles run per
batch / the batch size: how full the engine's batches were), capture-to-result latency p50/p99
and the share of the span the engine was busy.

Run::

    nice -n 10 .venv/bin/python benchmarks/bench_cameras.py [--counts 1,2,4,8] \\
        [--video configs/demo/mall_demo.mp4] [--backend onnx] [--threads 1] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(n: int, a: argparse.Namespace) -> dict[str, Any]:
    from pipeline.config import config_from_dict
    from pipeline.supervisor import Supervisor

    with tempfile.TemporaryDirectory() as tmp:
        cams = {f"cam{i}": {"url": str(a.video), "queue_policy": "lossless"} for i in range(n)}
        raw = {"run_dir": tmp, "jsonl": "counts.jsonl",
               "model": {"checkpoint": str(a.model), "backend": a.backend, "batch": a.batch},
               "metrics": {"port": None, "status_every_s": 30.0}, "redis": {"enabled": False},
               "runtime": {"torch_threads": a.threads}, "cameras": cams}
        load0 = os.getloadavg()[0]
        t0 = time.time()
        sup = Supervisor(config_from_dict(raw), console=False)
        if sup.run() != 0:
            raise SystemExit(f"the pipeline failed with {n} cameras")
        wall = time.time() - t0
        snap = sup.last_snapshot
        assert snap is not None
        rows = [json.loads(ln) for ln in (Path(tmp) / "counts.jsonl").read_text().splitlines()]
    res = [r for r in rows if r["type"] == "count"]
    spans = [c.span for c in snap.cameras.values() if c.span is not None]
    span = max(s[1] for s in spans) - min(s[0] for s in spans)
    lat = np.array([r["latency_ms"] for r in res])
    fps = len(res) / span
    in_order = all([r["frame_index"] for r in res if r["camera"] == c] ==
                   list(range(sum(1 for r in res if r["camera"] == c))) for c in cams)
    return {"cameras": n, "frames": len(res), "fps": fps, "fps_per_camera": fps / n,
            "batch_fill": snap.batch_fill(), "batches": snap.pool["batches"],
            "engine_busy": snap.pool["infer_ns"] / 1e9 / span, "wall_s": wall,
            "latency_p50_ms": float(np.percentile(lat, 50)),
            "latency_p99_ms": float(np.percentile(lat, 99)), "in_order": in_order,
            "load_start": load0, "load_end": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--video", type=Path, default=ROOT / "configs" / "demo" / "mall_demo.mp4")
    ap.add_argument("--model", type=Path, default=ROOT / "configs" / "demo" / "mall_demo_model.pt")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs; {a.video.name}, model {a.model.name}, "
          f"backend {a.backend}, batch {a.batch}, {a.threads} thread(s)", flush=True)
    results = []
    for n in (int(x) for x in a.counts.split(",")):
        r = run(n, a)
        results.append(r)
        print(json.dumps(r), flush=True)
    base = results[0]["fps"]
    print("\n| cameras | frames | aggregate fps | fps per camera | vs 1 camera | batch fill | "
          "engine busy | latency p50 / p99 ms | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['cameras']} | {r['frames']} | {r['fps']:.1f} | {r['fps_per_camera']:.1f} | "
              f"{r['fps'] / base:.2f}x | {100 * (r['batch_fill'] or 0):.0f}% | "
              f"{100 * r['engine_busy']:.0f}% | {r['latency_p50_ms']:.0f} / "
              f"{r['latency_p99_ms']:.0f} | {r['load_start']:.1f}-{r['load_end']:.1f} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
