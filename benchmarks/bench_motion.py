"""Benchmark: motion-gated tiles -- share of tiles skipped, fps with and without, Mall MAE change.

Every clip runs through the real pipeline (``Supervisor``, lossless: every frame counted) twice
in a row, the camera's ``motion_gate`` off then on, in this one process, so each ratio comes
from one run under one load:

* Mall: ``configs/demo/mall_demo.mp4`` (Mall frames 801-1100) and ``mall_701_800``: the GOPs of
  ``mall_10fps.mp4`` that hold frames 701-800, remuxed without re-encoding (``bench_adapt``'s
  ``make_clip``, checked pixel for pixel), with the shipped demo model, scored on frames 701-800
  with ``crowdstream eval --video-counts`` (raw and smoothed counts), gate off vs on;
* ``campus_480x360.mp4`` (795 frames, a few walkers on a campus path);
* a synthetic static scene (640x480, H.264 at CRF 23, sensor noise only: what a camera sees of an
  empty corridor at night).

Two tilings each: the demo model's own window (one 480x640 window a frame: a frame is reused
whole or counted whole) and 256x256 windows (the general model's window: 4-6 overlapping tiles a
frame). Share skipped = tiles reused / tiles, from the count records; fps = results per second
between the first and the last result; deviation = the mean (and largest) absolute difference of
a frame's raw count with the gate on from the same frame's with it off: the error the gate adds,
on every clip, with or without ground truth.

Run::

    nice -n 10 .venv/bin/python benchmarks/bench_motion.py [--data ../shared/data] \\
        [--threshold 6] [--max-age 5] [--only mall_demo,static] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO_MODEL = ROOT / "configs" / "demo" / "mall_demo_model.pt"
WINDOWS: dict[str, list[int] | None] = {"own": None, "256": [256, 256]}


def default_data() -> Path:
    return Path(os.environ.get("CROWDSTREAM_DATA", ROOT.parent / "shared" / "data"))


def static_scene(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A static textured 640x480 scene with per-frame sensor noise, H.264 (libx264, CRF 23)."""
    import av
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    bg = cv2.resize(coarse, (640, 480), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10, options={"crf": "23", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        for _ in range(n):
            img = np.clip(bg + rng.normal(0, 2.0, bg.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def run_pipeline(video: Path, window: list[int] | None, gate: bool, a: argparse.Namespace,
                 out: Path) -> dict[str, Any]:
    """One lossless run of ``video``; its records go to ``out``/counts.jsonl."""
    from pipeline.config import config_from_dict
    from pipeline.supervisor import Supervisor

    model: dict[str, Any] = {"checkpoint": str(DEMO_MODEL), "backend": a.backend, "batch": 4}
    if window:
        model["window"] = window
    raw = {"run_dir": str(out), "jsonl": "counts.jsonl", "model": model,
           "metrics": {"port": None, "status_every_s": 30.0}, "redis": {"enabled": False},
           "runtime": {"torch_threads": a.threads},
           "cameras": {"cam": {"url": str(video), "queue_policy": "lossless",
                               "motion_gate": {"enabled": gate, "threshold": a.threshold,
                                               "max_age_s": a.max_age}}}}
    sup = Supervisor(config_from_dict(raw), console=False)
    if sup.run() != 0:
        raise SystemExit(f"the pipeline failed on {video}")
    rows = [json.loads(ln) for ln in (out / "counts.jsonl").read_text().splitlines()]
    res = [r for r in rows if r["type"] == "count"]
    ts = [r["result_ts"] for r in res]
    tiles = sum(r["reused_tiles"]["of"] for r in res) if gate else None
    reused = sum(r["reused_tiles"]["count"] for r in res) if gate else 0
    return {"frames": len(res), "fps": (len(res) - 1) / (ts[-1] - ts[0]),
            "tiles_per_frame": res[0]["reused_tiles"]["of"] if gate else None,
            "skipped": reused / tiles if tiles else 0.0,
            "in_order": [r["frame_index"] for r in res] == list(range(len(res))),
            "raw_counts": [r["raw_count"] for r in res]}


def mall_mae(data: Path, counts: Path, offset: int) -> dict[str, float]:
    """``crowdstream eval --video-counts`` on Mall frames 701-800: raw and smoothed count
    (``offset``: the 0-based index in ``mall_10fps.mp4`` of the clip's first frame)."""
    out = {}
    for field in ("raw_count", "count"):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "eval", "--data",
                            str(data / "mall"), "--format", "json", "--select", "701-800",
                            "--video-counts", str(counts), "--count-field", field,
                            "--frame-offset", str(offset)],
                           cwd=ROOT, capture_output=True, text=True, check=True)
        summary = json.loads(r.stdout)
        out[f"mae_{field}"] = summary["mae"]
        out[f"rmse_{field}"] = summary["rmse"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--threshold", type=float, default=6.0)
    ap.add_argument("--max-age", type=float, default=5.0)
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated clip names")
    ap.add_argument("--windows", default="own,256")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        clips = {"mall_demo": ROOT / "configs" / "demo" / "mall_demo.mp4",
                 "mall_701_800": tmp / "mall_701_800.mp4",
                 "campus": a.data / "videos" / "campus_480x360.mp4",
                 "static": static_scene(tmp / "static.mp4")}
        if a.only:
            clips = {k: v for k, v in clips.items() if k in a.only.split(",")}
        offset = 0
        if "mall_701_800" in clips:  # 0-based frames 700-799, from the key frame before them
            from bench_adapt import make_clip

            offset = make_clip(a.data / "mall" / "mall_10fps.mp4", 700, 799,
                               clips["mall_701_800"])
        print(f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
              f"threshold {a.threshold:g}, max_age_s {a.max_age:g}, backend {a.backend}, "
              f"{a.threads} thread(s)", flush=True)
        results: list[dict[str, Any]] = []
        for name, video in clips.items():
            for wname in a.windows.split(","):
                row: dict[str, Any] = {"clip": name, "window": wname,
                                       "load_start": os.getloadavg()[0]}
                for gate in (False, True):
                    out = tmp / f"{name}-{wname}-{int(gate)}"
                    out.mkdir()
                    t0 = time.time()
                    r = run_pipeline(video, WINDOWS[wname], gate, a, out)
                    r["wall_s"] = time.time() - t0
                    if name == "mall_701_800":
                        r.update(mall_mae(a.data, out / "counts.jsonl", offset))
                    row["on" if gate else "off"] = r
                row["load_end"] = os.getloadavg()[0]
                dev = np.abs(np.array(row["on"].pop("raw_counts"))
                             - np.array(row["off"].pop("raw_counts")))
                row["deviation_mean"], row["deviation_max"] = float(dev.mean()), float(dev.max())
                results.append(row)
                print(json.dumps(row), flush=True)
    print("\n| clip | window | tiles/frame | skipped | fps off | fps on | on / off | count "
          "deviation mean / max | MAE off -> on (raw; smoothed) | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        off, on = row["off"], row["on"]
        mae = ""
        if "mae_raw_count" in off:
            mae = (f"{off['mae_raw_count']:.3f} -> {on['mae_raw_count']:.3f} "
                   f"({on['mae_raw_count'] - off['mae_raw_count']:+.3f}); "
                   f"{off['mae_count']:.3f} -> {on['mae_count']:.3f} "
                   f"({on['mae_count'] - off['mae_count']:+.3f})")
        print(f"| {row['clip']} | {row['window']} | {on['tiles_per_frame']} | "
              f"{100 * on['skipped']:.1f}% | {off['fps']:.1f} | {on['fps']:.1f} | "
              f"{on['fps'] / off['fps']:.2f} | {row['deviation_mean']:.3f} / "
              f"{row['deviation_max']:.3f} | {mae} | {row['load_start']:.1f}-"
              f"{row['load_end']:.1f} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
