"""``crowdstream calibrate int8 CONFIG``: an INT8 engine calibrated on the configured cameras.

Example::

    crowdstream calibrate int8 configs/demo.yaml --frames 32 --holdout 0.25 --max-deviation 0.02

Writes the INT8 ONNX engine into the model's engine cache (``model.cache_dir``, default
``<run_dir>/engines``) where ``model.precision: int8`` finds it, and a JSON report beside it.
Exit status 1 (and no engine) when the count deviation exceeds ``--max-deviation``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config (cameras and model section)")
    p.add_argument("--frames", type=int, default=32,
                   help="frames to collect over all cameras (default 32)")
    p.add_argument("--holdout", type=float, default=0.25,
                   help="share of frames held back for the report (default 0.25)")
    p.add_argument("--max-deviation", type=float, default=0.02,
                   help="refuse an engine whose relative count deviation exceeds this (0.02)")
    p.add_argument("--max-calibration-tiles", type=int, default=96)
    p.add_argument("--method", choices=["percentile", "minmax", "entropy"], default="percentile",
                   help="activation range calibration (percentile: robust to outliers)")
    p.add_argument("--activations", choices=["uint8", "int8"], default="uint8",
                   help="activation type (uint8: fastest on x86, every Conv runs as QLinearConv)")
    p.add_argument("--float-last", type=int, default=0,
                   help="keep the N MatMul/Gemm/Conv nearest the output in float (0)")
    p.add_argument("--no-per-channel", action="store_true",
                   help="one weight scale per tensor instead of per output channel")
    p.add_argument("--live-interval", type=float, default=2.0,
                   help="seconds between frames taken from a live camera (2)")
    p.add_argument("--live-timeout", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads")
    p.add_argument("--text-prompt", default=None, help="CLIP-Count: the prompt to bake in")


def main(args: argparse.Namespace) -> int:
    from calibrate.int8 import Int8Options, Int8Refused, calibrate_from_config
    from engines.backends.base import EngineError
    from pipeline.config import load_config

    try:
        opts = Int8Options(frames=args.frames, holdout=args.holdout,
                           max_deviation=args.max_deviation,
                           max_calibration_tiles=args.max_calibration_tiles,
                           method=args.method, per_channel=not args.no_per_channel,
                           activations=args.activations, float_last=args.float_last,
                           live_interval_s=args.live_interval,
                           live_timeout_s=args.live_timeout, threads=args.threads,
                           text_prompt=args.text_prompt)
    except ValueError as e:
        print(f"crowdstream calibrate int8: {e}", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    try:
        result = calibrate_from_config(cfg.model, cfg.cameras, cfg.model.engine_cache_dir,
                                       opts)
    except Int8Refused as e:
        _print_report(e.report)
        print(f"crowdstream calibrate int8: {e}", file=sys.stderr)
        return 1
    except EngineError as e:
        print(f"crowdstream calibrate int8: {e}", file=sys.stderr)
        return 1
    _print_report(result.report)
    print(f"INT8 engine: {result.engine_path}")
    print(f"report: {result.report_path}")
    for note in result.notes:
        print(note)
    return 0


def _print_report(r: dict[str, Any]) -> None:
    speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"
    if r.get("speedup_cpu"):
        speed += f" wall, {r['speedup_cpu']:.2f}x CPU time"
    print(f"held-back frames: {r['frames']}  count deviation INT8 vs FP32: "
          f"MAE {r['mae']:.3f}  max {r['max']:.3f}  relative {r['relative_deviation']:.3%} "
          f"(bound {r['bound']:.2%})  speedup {speed} "
          f"({r.get('tiles_per_s_int8') or 0:.1f} vs {r.get('tiles_per_s_fp32') or 0:.1f} "
          f"tiles/s)")
    print(json.dumps({k: r[k] for k in ("mean_count_fp32", "mean_count_int8",
                                        "max_relative_deviation", "calibration_frames",
                                        "calibration_tiles", "calibration_seconds")}))
