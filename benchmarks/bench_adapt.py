"""Site adaptation on the Mall camera (issue 12): each setting scored through the real pipeline.

For a base model that never saw Mall (give its checkpoint), every setting runs the real commands:

* ``base``: the base model as it is;
* ``footage``: ``crowdstream adapt`` with frames 1-700 of ``mall_10fps.mp4`` as unlabeled
  footage (its first 70 s) and no labels (``--accept-unverified``);
* ``5`` / ``20`` / ``100``: that many labeled frames chosen evenly from 1-700 (decoded from the
  video by the pipeline's decoder, saved as JPEG with their head points in the camera's labels
  file), ``--with-footage`` adds the footage to them;
* ``all``: every frame of 1-700 labeled.

Each model (the adapted one, whatever the guard rail decided: its decision and both held-back
figures are in the table) then counts the video through ``crowdstream run`` (JSON lines out),
and ``crowdstream eval --video-counts`` scores frames 701-800 (``--score``) on the raw per-frame
count and on the smoothed ``count`` (the config's EMA). The pipeline runs on a clip remuxed from
``mall_10fps.mp4`` without re-encoding: whole GOPs from the key frame before the first scored
frame to the one after the last (checked to decode to the same pixels as the full file), so a
setting costs 250 frames of inference, not 800.

Run (the table goes to stdout and ``OUT/results.md``, everything to ``OUT/results.json``)::

    nice -n 10 .venv/bin/python benchmarks/bench_adapt.py runs/general_nomall/best.pt \\
        --out runs/bench_adapt --train-minutes 5 --threads 1
    # a quick look: two settings, a few steps, five scored frames
    nice -n 10 .venv/bin/python benchmarks/bench_adapt.py BASE.pt --settings base,5 \\
        --steps 3 --score 701-705 --out /tmp/bench_adapt
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SETTINGS = ("base", "footage", "5", "20", "100", "all")
TRAIN_FRAMES = 700  # frames 1-700 are what adaptation may see


def data_dir() -> Path:
    return Path(os.environ.get("CROWDSTREAM_DATA", ROOT.parent / "shared" / "data"))


def cli(args: list[str], log: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``crowdstream ARGS`` (this tree's CLI), its output appended to ``log``."""
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ crowdstream {shlex.join(args)}  # rc {proc.returncode}, "
                f"{time.monotonic() - t0:.0f} s\n{proc.stdout}{proc.stderr}\n")
    if check and proc.returncode not in (0, 1):
        raise SystemExit(f"crowdstream {args[0]} failed (rc {proc.returncode}), see {log}:\n"
                         f"{proc.stderr[-2000:]}")
    return proc


# -- the clip the pipeline counts ---------------------------------------------------------------


def make_clip(video: Path, first: int, last: int, out: Path) -> int:
    """Remux whole GOPs of ``video`` (no re-encoding) covering 0-based frames first..last;
    returns the 0-based frame index of the clip's first frame."""
    import av

    with av.open(str(video)) as src:
        s = src.streams.video[0]
        rate = float(s.average_rate)
        tb = float(s.time_base)
        packets = [p for p in src.demux(s) if p.size]
        index = [round(float(p.pts) * tb * rate) for p in packets]
        keys = [i for i, p in enumerate(packets) if p.is_keyframe]
        start = max(i for i in keys if index[i] <= first)
        after = [i for i in keys if index[i] > last]
        stop = min(after) if after else len(packets)
        shift = packets[start].pts
        with av.open(str(out), "w") as dst:
            o = dst.add_stream_from_template(s)
            for p in packets[start:stop]:
                p.pts -= shift
                p.dts -= shift
                p.stream = o
                dst.mux(p)
    begin = index[start]
    check_clip(video, out, begin, min(first + 3, last))
    return begin


def check_clip(video: Path, clip: Path, begin: int, upto: int) -> None:
    """The clip's frames must be the full file's frames, pixel for pixel."""
    from engines.video import read_frames

    want = dict(read_frames(str(video), range(begin, upto + 1), fmt="bgr24"))
    got = dict(read_frames(str(clip), range(0, upto - begin + 1), fmt="bgr24"))
    for i in range(begin, upto + 1):
        if not np.array_equal(want[i], got[i - begin]):
            raise SystemExit(f"{clip}: frame {i - begin} differs from frame {i} of {video}")


# -- one setting --------------------------------------------------------------------------------


def write_site(folder: Path, video: Path, base: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "site.yaml"
    cfg.write_text(f"# bench_adapt: the Mall camera\nrun_dir: run\nmodel:\n  checkpoint: {base}\n"
                   f"cameras:\n  mall:\n    url: {video}\n")
    return cfg


def write_labels(folder: Path, mall: Path, video: Path, n: int) -> int:
    """``n`` labeled frames chosen evenly from 1-700 (all of them for n >= 700)."""
    import cv2

    from engines.video import read_frames

    frames = json.loads((mall / "train_points.json").read_text())["frames"]
    by_index = {f["frame_index"]: f for f in frames}
    pick = sorted({int(i) for i in np.linspace(0, TRAIN_FRAMES - 1, min(n, TRAIN_FRAMES))
                   .round()})
    lab = folder / "run" / "labels" / "mall"
    lab.mkdir(parents=True, exist_ok=True)
    images = []
    for i, bgr in read_frames(str(video), pick, fmt="bgr24"):
        name = f"mall_{i + 1:06d}.jpg"
        cv2.imwrite(str(lab / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"image": name, "points": by_index[i]["points"]})
    (lab / "labels.json").write_text(json.dumps({"camera": "mall", "images": images}))
    return len(images)


def adapt(setting: str, folder: Path, a: argparse.Namespace, video: Path, mall: Path,
          log: Path) -> tuple[Path, dict[str, Any]]:
    cfg = write_site(folder, video, a.base)
    args = ["adapt", "mall", "--config", str(cfg), "--base", str(a.base), "--out",
            str(folder / "adapted.pt"), "--train-minutes", f"{a.train_minutes:g}", "--quiet",
            "--no-config-update", "--seed", str(a.seed)]
    if a.steps:
        args += ["--steps", str(a.steps)]
    if a.lr:
        args += ["--lr", f"{a.lr:g}"]
    if a.threads:
        args += ["--threads", str(a.threads)]
    if a.adabn:
        args.append("--adabn")
    labeled = 0
    if setting != "footage":
        labeled = write_labels(folder, mall, video, TRAIN_FRAMES if setting == "all"
                               else int(setting))
    if setting == "footage" or a.with_footage:
        args += ["--footage", str(video), "--minutes", f"{TRAIN_FRAMES / 10 / 60:.6f}",
                 "--pairs", str(a.pairs)]
    proc = cli(args, log)
    report = json.loads((folder / "adapted.json").read_text())
    report["labeled"] = labeled
    report["guard_rail"] = ("unverified" if not report["verified"] else
                            "accepted" if proc.returncode == 0 else "kept base")
    return folder / "adapted.pt", report


def score(model: Path, folder: Path, clip: Path, begin: int, a: argparse.Namespace,
          mall: Path, log: Path) -> dict[str, Any]:
    """Count the clip with ``crowdstream run``, score it with ``crowdstream eval``."""
    folder.mkdir(parents=True, exist_ok=True)
    run_cfg = folder / "run.yaml"
    threads = f"\nruntime: {{torch_threads: {a.threads}}}" if a.threads else ""
    run_cfg.write_text(f"run_dir: run_eval\njsonl: counts.jsonl\nmodel:\n  checkpoint: {model}\n"
                       f"  batch: 1\nredis: {{enabled: false}}\nmetrics: {{port: null}}{threads}\n"
                       f"defaults:\n  smoothing: {{method: ema, alpha: 0.3}}\n"
                       f"cameras:\n  mall:\n    url: {clip}\n")
    counts = folder / "run_eval" / "counts.jsonl"
    counts.unlink(missing_ok=True)
    cli(["run", str(run_cfg), "--quiet"], log)
    out: dict[str, Any] = {}
    for field, key in (("raw_count", "raw"), ("count", "smoothed")):
        proc = cli(["eval", "--data", str(mall), "--format", "json", "--select", a.score,
                    "--video-counts", str(counts), "--frame-offset", str(begin),
                    "--count-field", field], log)
        summary = json.loads(proc.stdout)
        out[key] = {"mae": summary["mae"], "rmse": summary["rmse"],
                    "mean_true": summary["mean_true"], "mean_pred": summary["mean_pred"],
                    "frames": summary["images"]}
    return out


# -- the table ----------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], a: argparse.Namespace) -> str:
    lines = [f"Mall, base `{a.base}`, scored on frames {a.score} of mall_10fps.mp4 through "
             "`crowdstream run` + `crowdstream eval --video-counts`", "",
             "| setting | labeled (train / held back) | guard rail (held-back MAE adapted / base) "
             "| MAE | RMSE | MAE smoothed | RMSE smoothed | steps, s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rep = r.get("adapt") or {}
        held = rep.get("held_back") or []
        lab = f"{len(rep.get('train_frames') or [])} / {len(held)}" if rep.get("labeled") else "-"
        gr = "-"
        if rep:
            gr = rep["guard_rail"]
            if rep.get("adapted_scores") and rep.get("base_scores"):
                gr += (f" ({rep['adapted_scores']['mae']:.2f} / "
                       f"{rep['base_scores']['mae']:.2f})")
        s = r["scores"]
        steps = f"{rep['steps']}, {rep['seconds']:.0f}" if rep else "-"
        lines.append(f"| {r['setting']} | {lab} | {gr} | {s['raw']['mae']:.2f} | "
                     f"{s['raw']['rmse']:.2f} | {s['smoothed']['mae']:.2f} | "
                     f"{s['smoothed']['rmse']:.2f} | {steps} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path, help="the base checkpoint (a model that never saw Mall)")
    p.add_argument("--data", type=Path, default=None, help="the Mall folder (default: "
                   "$CROWDSTREAM_DATA/mall or ../shared/data/mall)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_adapt")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated, of {', '.join(SETTINGS)} (default: all)")
    p.add_argument("--score", default="701-800", help="1-based Mall frames scored (default "
                                                      "701-800)")
    p.add_argument("--train-minutes", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="adapt's --lr (default: its own)")
    p.add_argument("--pairs", type=int, default=60, help="footage frame pairs")
    p.add_argument("--with-footage", action="store_true",
                   help="labeled settings use the footage too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adabn", action="store_true", help="adapt's --adabn (BatchNorm statistics "
                   "re-estimated on the camera's frames first)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    a.base = a.base.resolve()
    mall = (a.data or data_dir() / "mall").resolve()
    video = mall / "mall_10fps.mp4"
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not a.base.is_file() or not video.is_file():
        raise SystemExit(f"settings {bad} unknown" if bad else
                         f"not found: {a.base if not a.base.is_file() else video}")
    lo, _, hi = a.score.partition("-")
    first, last = int(lo) - 1, int(hi or lo) - 1
    if first < TRAIN_FRAMES:
        raise SystemExit(f"--score {a.score}: frames 1-{TRAIN_FRAMES} are adaptation data")
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "commands.log"
    clip = a.out / "mall_clip.mp4"
    begin = make_clip(video, first, last, clip)
    print(f"clip: frames {begin + 1}-... of {video.name} -> {clip} (frame offset {begin})")
    rows = []
    for setting in settings:
        t0 = time.monotonic()
        folder = a.out / setting
        if setting == "base":
            row = {"setting": setting, "model": str(a.base)}
            model = a.base
        else:
            model, rep = adapt(setting, folder, a, video, mall, log)
            row = {"setting": setting, "model": str(model), "adapt": rep}
        row["scores"] = score(model, folder, clip, begin, a, mall, log)
        row["seconds"] = round(time.monotonic() - t0, 1)
        rows.append(row)
        print(f"{setting}: raw MAE {row['scores']['raw']['mae']:.2f}, smoothed MAE "
              f"{row['scores']['smoothed']['mae']:.2f} ({row['seconds']:.0f} s)", flush=True)
    text = table(rows, a)
    (a.out / "results.md").write_text(text)
    (a.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in
                                                             vars(a).items()},
                                                    "rows": rows}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
