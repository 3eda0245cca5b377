"""Plausibility of a model on the real clips: its count on a few frames beside rough hand counts.

The clips in ``../shared/data/videos`` have no ground truth; ``configs/data/scenes.json`` holds our
point labels of some campus and one_by_one frames, and ``HAND`` below our rough counts of the
street and concourse frames (people whose head is visible, counted once on screen). Each frame is
decoded by the pipeline's decoder and counted by ``engines.predict`` with the model's own resize
rule and windows, as ``crowdstream eval`` counts.

Run::

    .venv/bin/python benchmarks/clip_counts.py engines/models/shipped/general.pt \\
        configs/demo/mall_demo_model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (clip, frame index) -> rough hand count, for frames scenes.json does not label
HAND = {("street_1080p.mp4", 0): 23, ("concourse_720p.avi", 0): 46}
# the campus and one_by_one frames are ones configs/train_general.yaml holds back (val_select)
FRAMES = [("campus_480x360.mp4", 600), ("campus_480x360.mp4", 700),
          ("one_by_one_768x432.mp4", 880), ("one_by_one_768x432.mp4", 1290),
          ("street_1080p.mp4", 0), ("concourse_720p.avi", 0)]


def truth(data: Path) -> dict[tuple[str, int], float]:
    labels = json.loads((ROOT / "configs" / "data" / "scenes.json").read_text())
    got = {(Path(f["video"]).name, int(f["frame_index"])): float(f["count"])
           for f in labels["frames"]}
    return {**got, **HAND}


def empty_frames(data: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The empty frames of scenes.json: those configs/train_general.yaml holds back, and all."""
    from engines.train.config import load_train_config
    from engines.train.datasets import parse_ranges

    labels = json.loads((ROOT / "configs" / "data" / "scenes.json").read_text())["frames"]
    cfg = load_train_config(ROOT / "configs" / "train_general.yaml")
    (scenes,) = [s for s in cfg.data.train if s.name == "scenes"]
    held = set(parse_ranges(scenes.val_select, len(labels)))
    empty = [(Path(f["video"]).name, int(f["frame_index"]), i in held)
             for i, f in enumerate(labels) if f["count"] == 0]
    return [(c, k) for c, k, h in empty if h], [(c, k) for c, k, _ in empty]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "CROWDSTREAM_DATA", ROOT.parent / "shared" / "data")))
    a = ap.parse_args()
    import torch

    from engines.checkpoint import load_checkpoint
    from engines.predict import predict
    from engines.video import read_frames

    torch.set_num_threads(1)
    known = truth(a.data)
    held, every = empty_frames(a.data)
    wanted = sorted(set(FRAMES) | set(every))
    frames = {}  # each clip decoded once, for every frame asked of it
    for clip in sorted({c for c, _ in wanted}):
        indices = [k for c, k in wanted if c == clip]
        for index, rgb in read_frames(str(a.data / "videos" / clip), indices, fmt="rgb24"):
            frames[(clip, index)] = rgb
    models = {p.name: load_checkpoint(p)[0].eval() for p in a.checkpoints}
    with torch.no_grad():
        counts = {key: [predict(m, frames[key]).count for m in models.values()] for key in wanted}
    print("| clip | frame | hand count | " + " | ".join(models) + " |")
    print("|---|---|---|" + "---|" * len(models))
    for key in FRAMES:
        print(f"| {key[0]} | {key[1]} | {known[key]:g} | "
              + " | ".join(f"{c:.1f}" for c in counts[key]) + " |")
    for name, keys in (("held-back", held), ("all", every)):
        means = [sum(counts[k][i] for k in keys) / len(keys) for i in range(len(models))]
        print(f"| mean count, {len(keys)} {name} empty frames of scenes.json | | 0 | "
              + " | ".join(f"{c:.2f}" for c in means) + " |")

if __name__ == "__main__":
    main()
