"""The trainer end to end on a tiny generated dataset (bright dots = heads), CPU, seconds."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from engines.train.config import OptimConfig, parse_set, train_config_from_dict
from engines.train.trainer import Trainer, epoch_order, lr_at

torch.set_num_threads(1)


def make_dots(root: Path, n: int, seed: int, size: int = 64) -> Path:
    """``n`` images with 0-9 bright dots on textured dark ground, in the JSON layout."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        k = int(rng.integers(0, 10))
        pts = rng.uniform(4, size - 4, (k, 2))
        for x, y in pts:
            cv2.circle(img, (int(x), int(y)), 2, (255, 255, 255), -1)
        name = f"img_{i:03d}.png"
        cv2.imwrite(str(root / name), img)
        entries.append({"image": name, "count": k, "points": pts.tolist()})
    (root / "points.json").write_text(json.dumps({"images": entries}))
    return root


def tiny_config(data: Path, out: Path, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {"train": {"root": str(data), "format": "json"}, "holdout": 0.25},
        "model": {"base": "ebc-tiny-rn", "truncation": 2, "spec": {"window": [64, 64]}},
        "augment": {"crop": [64, 64], "zoom_max": 1.0, "jitter_p": 0.0, "blur_p": 0.0,
                    "noise_p": 0.0},
        "loss": {"sinkhorn_iters": 10},
        "optim": {"lr": 3e-3, "batch_size": 8, "epochs": 2, "warmup_epochs": 0.0,
                  "t0": 100.0, "eta_min": 1e-4},
        "out_dir": str(out), "seed": 7, "threads": 1,
    }
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


@pytest.fixture(scope="module")
def dots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dots(tmp_path_factory.mktemp("dots"), 48, seed=1)


@pytest.fixture(scope="module")
def trained(dots: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One short training run shared by the accuracy, checkpoint and CLI tests."""
    out = tmp_path_factory.mktemp("run")
    cfg = train_config_from_dict(tiny_config(dots, out, optim={"epochs": 25},
                                             eval={"start": 20}))
    summary = Trainer(cfg, quiet=True).fit()
    return out, summary


def test_schedule_warmup_and_restarts() -> None:
    o = OptimConfig(lr=1e-3, warmup_epochs=2, warmup_lr=1e-5, t0=2, t_mult=2, eta_min=0.0)
    assert lr_at(0, o) == pytest.approx(1e-5)
    assert lr_at(1, o) == pytest.approx((1e-5 + 1e-3) / 2)
    assert lr_at(2, o) == pytest.approx(1e-3)  # cycle 1 starts at the peak
    assert lr_at(3, o) == pytest.approx(5e-4)  # half-way down a 2-epoch cycle
    assert lr_at(4, o) == pytest.approx(1e-3)  # restart; the next cycle lasts 4 epochs
    assert lr_at(6, o) == pytest.approx(5e-4)
    order = epoch_order(10, 25, seed=1, epoch=3)
    assert len(order) == 25 and sorted(order[:10].tolist()) == list(range(10))
    assert (order == epoch_order(10, 25, seed=1, epoch=3)).all()


def test_few_steps_reduce_the_loss(dots: Path, tmp_path: Path) -> None:
    cfg = train_config_from_dict(tiny_config(dots, tmp_path, optim={"epochs": 3}))
    hist = Trainer(cfg, quiet=True).fit()["history"]
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and rows[0]["val_mae"] != ""
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_resume_gives_identical_weights(dots: Path, tmp_path: Path) -> None:
    straight = train_config_from_dict(tiny_config(dots, tmp_path / "a"))
    Trainer(straight, quiet=True).fit()
    first = train_config_from_dict(tiny_config(dots, tmp_path / "b", optim={"epochs": 1}))
    Trainer(first, quiet=True).fit()
    resumed = train_config_from_dict(tiny_config(dots, tmp_path / "b"))
    summary = Trainer(resumed, quiet=True).fit(resume=tmp_path / "b" / "state.pt")
    assert summary["epochs"] == 2
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"]


def test_tiny_model_beats_the_training_mean(trained: tuple[Path, dict[str, Any]],
                                            dots: Path) -> None:
    from engines.checkpoint import load_checkpoint
    from engines.train.datasets import holdout_split, load_dataset
    from engines.train.evaluate import evaluate

    out, summary = trained
    train, val = holdout_split(load_dataset(dots, "json"), 0.25, seed=7)
    mean = float(np.mean([s.count for s in train]))
    baseline = float(np.mean([abs(s.count - mean) for s in val]))
    model, meta = load_checkpoint(out / "best.pt")
    result = evaluate(model, val)
    assert result.mae == pytest.approx(summary["best_val_mae"], rel=1e-4)
    assert meta["val_mae"] == pytest.approx(result.mae, rel=1e-4)
    assert result.mae < 0.7 * baseline, (result.mae, baseline)


def test_bins_and_anchors_round_trip(trained: tuple[Path, dict[str, Any]], dots: Path) -> None:
    from engines.checkpoint import load_checkpoint
    from engines.train.datasets import holdout_split, load_dataset
    from engines.train.labels import block_counts, fine_bins, measure_anchors

    out, _ = trained
    train, _ = holdout_split(load_dataset(dots, "json"), 0.25, seed=7)
    expected = measure_anchors([block_counts(s.points, (64, 64), 8) for s in train],
                               fine_bins(2))
    model, meta = load_checkpoint(out / "best.pt")
    assert [tuple(b) for b in model.spec.bins] == [(0.0, 0.0), (1.0, 1.0), (2.0, None)]
    assert list(model.spec.anchors) == pytest.approx(expected)
    assert expected[2] >= 2.0
    assert model.anchors.flatten().tolist() == pytest.approx(expected)
    assert model.spec.truncation == 2 and meta["config"]["model"]["truncation"] == 2
    # random init: the bin embeddings are orthonormal and stored with the weights
    t = model.text_features
    assert torch.allclose(t @ t.T, torch.eye(3), atol=1e-5)


def test_cli_train_resume_and_eval(trained: tuple[Path, dict[str, Any]], dots: Path,
                                   tmp_path: Path) -> None:
    import yaml

    from pipeline.cli import main

    out, _ = trained
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(dots, tmp_path / "run")))
    assert main(["train", str(cfg_path), "--quiet", "--set", "optim.epochs=1",
                 "--export", str(tmp_path / "exported.pt")]) == 0
    assert (tmp_path / "exported.pt").is_file()
    assert main(["train", str(cfg_path), "--quiet", "--resume", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert main(["eval", str(out / "best.pt"), "--data", str(dots), "--format", "json",
                 "--select", "1-12", "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["images"] == 12 and math.isfinite(summary["mae"])
    lines = (tmp_path / "ev" / "errors.csv").read_text().splitlines()
    assert lines[0] == "name,frame_index,true,pred,error" and len(lines) == 13
    png = cv2.imread(str(tmp_path / "ev" / "counts.png"))
    assert png is not None and png.shape[1] == 1000


def test_video_counts_are_scored_by_frame(tmp_path: Path) -> None:
    from engines.train.datasets import Sample
    from engines.train.evaluate import EvalResult, records_from_jsonl

    samples = [Sample(f"f{i}", Path("x"), np.zeros((i, 2), np.float32), frame_index=i)
               for i in (10, 11)]
    lines = [{"type": "count", "camera": "mall", "frame_index": i, "raw_count": i + 0.5,
              "count": 0.0} for i in range(8, 12)]
    path = tmp_path / "counts.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    res = EvalResult(records_from_jsonl(path, samples))
    assert [r.pred for r in res.records] == [10.5, 11.5] and res.mae == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no count for 2 annotated frame"):
        records_from_jsonl(path, samples, frame_offset=5)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from engines.yamlconfig import ConfigError

    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key \(did you mean 'lr'\?\)"):
        train_config_from_dict({"data": {"train": {"root": "x"}}, "optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"data\.train\.format: expected one of"):
        train_config_from_dict({"data": {"train": {"root": "x", "format": "coco"}}})
    assert parse_set(["optim.epochs=3", "model.spec.window=[32, 32]"]) == {
        "optim": {"epochs": 3}, "model": {"spec": {"window": [32, 32]}}}


def test_precise_bn_matches_the_images_and_keeps_weights() -> None:
    from engines.models import create_model, small_spec
    from engines.train.trainer import precise_bn

    torch.manual_seed(0)
    model = create_model(small_spec("ebc-tiny-rn").replace(window=(64, 64))).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()
               if "running" not in k and "num_batches" not in k}
    images = [np.full((64, 64, 3), 200, np.uint8) for _ in range(3)]
    precise_bn(model, images)
    assert not model.training
    bn = model.image_encoder.bn1
    x = torch.full((1, 3, 64, 64), 200 / 255.0)
    with torch.no_grad():  # the first BN sees conv1 of the normalised input: its exact mean
        feat = model.image_encoder.conv1((x - model.mean) / model.std)
    assert torch.allclose(bn.running_mean, feat.mean(dim=(0, 2, 3)), atol=1e-4)
    assert bn.momentum == 0.1
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_count_calibration_folds_into_the_anchors(trained: tuple[Path, dict[str, Any]],
                                                  dots: Path, tmp_path: Path) -> None:
    from engines.checkpoint import load_checkpoint, save_checkpoint
    from engines.predict import predict
    from engines.train.datasets import load_dataset
    from engines.train.trainer import calibrated_copy

    model, _ = load_checkpoint(trained[0] / "best.pt")
    samples = load_dataset(dots, "json", select="1-16")
    images = [s.load_rgb() for s in samples]
    true = [s.count * 2 for s in samples]  # pretend the model counts half of what it should
    before = sum(predict(model, im).count for im in images)
    calibrated, scale = calibrated_copy(model, images, true)
    assert scale == pytest.approx(sum(true) / before, rel=1e-6)
    assert sum(predict(calibrated, im).count for im in images) == pytest.approx(sum(true), rel=1e-4)
    assert list(calibrated.spec.anchors) == pytest.approx([a * scale for a in model.spec.anchors])
    save_checkpoint(tmp_path / "c.pt", calibrated, {"count_scale": scale})
    reloaded, meta = load_checkpoint(tmp_path / "c.pt")
    assert predict(reloaded, images[0]).count == pytest.approx(predict(calibrated, images[0]).count)
    assert sum(predict(model, im).count for im in images) == pytest.approx(before)  # untouched
