"""``crowdstream adapt`` / ``snapshot`` / ``labels import`` end to end on the Mall camera.

Real data: frames of ``mall_10fps.mp4`` decoded by the pipeline's decoder, a few of them labeled
from ``train_points.json`` (converted into our labels file here), a tiny CLIP-EBC (random init,
so any sensible adaptation beats it) as the base, the shipped demo model where the base must be
good (the guard rail), the real CLI in-process, real files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from engines.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from engines.modelcard import card_of
from engines.models import create_model, small_spec
from engines.predict import predict
from engines.train.adapt import (
    Adapter,
    AdaptSettings,
    FootagePair,
    Geometry,
    LabeledFrame,
    anchor_loss,
    forward_frames,
    nested_boxes,
    ranking_loss,
    relative_gap,
    score,
    split_holdout,
)
from engines.train.sitelabels import read_labels
from engines.train.transforms import to_tensor_layout
from engines.video import read_frames
from pipeline.adapt import zone_fn
from pipeline.cli import main as cli
from pipeline.config import load_config

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo" / "mall_demo_model.pt"
PICK = [int(i) for i in np.linspace(0, 690, 8).round()]  # labeled Mall frames (0-based)

SITE = """\
# A site with two cameras (adapt tests)
run_dir: run              # labels and adapted models live here

model:
  checkpoint: {demo}   # the global model
  batch: 2

cameras:
  mall:
    url: {video}   # the Mall camera
    realtime: false        # keep it a file
    zones:                 # two halves of the view
      - {{name: left, polygon: [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}}
      - {{name: right, polygon: [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}}
  other:
    url: {video}   # not adapted
"""


@pytest.fixture(scope="module")
def mall(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Decoded frames (once per module) and their head points."""
    from conftest import data_root

    root = data_root()
    if root is None:
        pytest.skip("real data not found: set CROWDSTREAM_DATA or put it at ../shared/data")
    mall = root / "mall"
    points = {f["frame_index"]: f["points"]
              for f in json.loads((mall / "train_points.json").read_text())["frames"]}
    frames = dict(read_frames(str(mall / "mall_10fps.mp4"), PICK, fmt="bgr24"))
    return {"video": mall / "mall_10fps.mp4", "frames": frames, "points": points}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP-EBC with random weights, one 480x640 window per Mall frame."""
    spec = small_spec("ebc-tiny-rn")
    backbone = dict(spec.backbone)
    backbone["vision_cfg"] = {**backbone["vision_cfg"], "width": 8}
    backbone["embed_dim"] = 32
    spec = spec.replace(window=(480, 640), block_size=16, backbone=backbone,
                        decoder_channels=(32,), name="tiny-test")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "tiny.pt"
    save_checkpoint(path, create_model(spec).eval(), {"test": True})
    return path


def make_site(tmp: Path, mall: dict[str, Any], entries: list[dict[str, Any]] | None = None
              ) -> tuple[Path, Path]:
    """A config with comments, and (when ``entries``) the camera's labels file: a JPEG of each
    picked frame as the pipeline decodes it, plus ``entries`` (``image`` added here)."""
    cfg = tmp / "site.yaml"
    cfg.write_text(SITE.format(demo=DEMO, video=mall["video"]))
    lab = tmp / "run" / "labels" / "mall"
    lab.mkdir(parents=True)
    if entries is not None:
        images = []
        for i, e in zip(PICK, entries, strict=False):
            name = f"mall_{i:04d}.jpg"
            cv2.imwrite(str(lab / name), mall["frames"][i], [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append({"image": name, **e})
        (lab / "labels.json").write_text(json.dumps({"camera": "mall", "images": images}))
    return cfg, lab


def adapt(cfg: Path, *extra: str) -> int:
    return cli(["adapt", "mall", "--config", str(cfg), "--threads", "1", "--quiet", *extra])


def assert_pointed_at_adapted(cfg: Path, before: str) -> Path:
    """The camera's model is set in place: every original line kept, in order, comments too."""
    after = cfg.read_text()
    added = [ln for ln in after.splitlines() if ln not in before.splitlines()]
    assert [ln for ln in after.splitlines() if ln not in added] == before.splitlines()
    assert added[0].strip().startswith("model:  # crowdstream adapt ")
    loaded = load_config(cfg)
    assert loaded.cameras["other"].model is None
    ckpt = Path(loaded.cameras["mall"].model.checkpoint)
    assert ckpt.is_file() and ckpt.parent == (cfg.parent / "run" / "adapt" / "mall").resolve()
    return ckpt


def points_of(mall: dict[str, Any]) -> list[list[list[float]]]:
    return [mall["points"][i] for i in PICK]


# -- the inputs, one by one --------------------------------------------------------------------


def test_adapt_from_labeled_points(tmp_path: Path, mall: dict[str, Any], tiny_base: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = make_site(tmp_path, mall, [{"points": p} for p in points_of(mall)])
    before = cfg.read_text()
    assert adapt(cfg, "--base", str(tiny_base), "--steps", "12", "--lr", "1e-3") == 0
    out = capsys.readouterr()
    assert "now counts with" in out.out and "adapted MAE" in out.out and "base MAE" in out.out
    ckpt = assert_pointed_at_adapted(cfg, before)
    card = card_of(ckpt)
    assert card is not None and card.name == "tiny-test@mall"
    assert any("6 labeled frames (6 points)" in t for t in card.trained_on)
    fig = card.figures[0]
    assert fig.images == 2 and "held-back" in fig.dataset and "base tiny-test" in fig.note
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert report["accepted"] and report["verified"] and len(report["held_back"]) == 2
    assert report["adapted_scores"]["mae"] < report["base_scores"]["mae"]
    assert math.isclose(fig.mae, report["adapted_scores"]["mae"], rel_tol=1e-3)
    assert read_metadata(ckpt)["adapted"]["base_sha256"] == report["base_sha256"]


def test_adapt_from_counts_only(tmp_path: Path, mall: dict[str, Any], tiny_base: Path) -> None:
    cfg, _ = make_site(tmp_path, mall, [{"count": len(p)} for p in points_of(mall)])
    before = cfg.read_text()
    assert adapt(cfg, "--base", str(tiny_base), "--steps", "12", "--lr", "1e-3") == 0
    ckpt = assert_pointed_at_adapted(cfg, before)
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert report["kinds"] == "6 count" and report["losses"]["count_l1"] > 0
    assert report["adapted_scores"]["mae"] < report["base_scores"]["mae"]


def test_adapt_from_zone_counts(tmp_path: Path, mall: dict[str, Any], tiny_base: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    zone_counts = [{"zone_counts": {"left": sum(x < 320 for x, _ in p),
                                    "right": sum(x >= 320 for x, _ in p)}}
                   for p in points_of(mall)]
    cfg, lab = make_site(tmp_path, mall, zone_counts)
    before = cfg.read_text()
    assert adapt(cfg, "--base", str(tiny_base), "--steps", "12", "--lr", "1e-3") == 0
    ckpt = assert_pointed_at_adapted(cfg, before)
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert report["kinds"] == "6 zones" and report["losses"]["zones_l1"] > 0
    # a zone the camera does not have is refused with the camera's zones named
    data = json.loads((lab / "labels.json").read_text())
    data["images"][0]["zone_counts"] = {"door": 3}
    (lab / "labels.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert adapt(cfg, "--base", str(tiny_base), "--steps", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "zone 'door' is not a zone of the camera (its zones: left, right)" in err
    assert len(err.splitlines()) == 1


def test_adapt_from_footage_only_needs_accept_unverified(
        tmp_path: Path, mall: dict[str, Any], tiny_base: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = make_site(tmp_path, mall)
    before = cfg.read_text()
    foot = ["--footage", str(mall["video"]), "--minutes", "0.2", "--pairs", "4"]
    assert adapt(cfg, "--base", str(tiny_base), *foot, "--steps", "3") == 2
    assert "pass --accept-unverified" in capsys.readouterr().err
    assert cfg.read_text() == before
    assert adapt(cfg, "--base", str(tiny_base), *foot, "--steps", "3",
                 "--accept-unverified") == 0
    assert "unverified" in capsys.readouterr().out
    ckpt = assert_pointed_at_adapted(cfg, before)
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert report["footage_pairs"] == 4 and not report["verified"]
    assert {"rank", "temporal", "anchor"} <= set(report["losses"])
    assert report["settings"]["anchor_weight"] > 0  # footage only: the anchor is on
    card = card_of(ckpt)
    assert card is not None and "unverified" in card.summary and not card.figures


@pytest.mark.parametrize("fmt", ["labelstudio", "cvat", "coco"])
def test_adapt_from_an_export_written_by_hand(tmp_path: Path, mall: dict[str, Any],
                                              tiny_base: Path, fmt: str) -> None:
    """Frames saved by `crowdstream snapshot`, labeled elsewhere, imported by `adapt --import`."""
    cfg, lab = make_site(tmp_path, mall)
    assert cli(["snapshot", "mall", "--config", str(cfg), "--at", "5", "--count", "4",
                "--every", "15"]) == 0
    labels = read_labels(lab / "labels.json", "mall")
    names = [e.image for e in labels.entries]
    assert len(names) == 4 and all(e.kind == "unlabeled" for e in labels.entries)
    idx = [int(n.rsplit("-f", 1)[1][:6]) for n in names]
    assert idx == [50, 200, 350, 500]  # 5 s, then every 15 s of a 10 fps file
    pts = [mall["points"][i] for i in idx]
    export = tmp_path / {"labelstudio": "ls.json", "cvat": "annotations.xml",
                         "coco": "coco.json"}[fmt]
    export.write_text(EXPORTERS[fmt](names, pts))
    before = cfg.read_text()
    assert adapt(cfg, "--base", str(tiny_base), "--import", str(export), "--steps", "6",
                 "--lr", "1e-3") == 0
    labels = read_labels(lab / "labels.json", "mall")
    for e, p in zip(labels.entries, pts, strict=True):
        np.testing.assert_allclose(e.points, p, atol=0.02)
    assert_pointed_at_adapted(cfg, before)


def test_guard_rail_keeps_the_base_when_adaptation_is_worse(
        tmp_path: Path, mall: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The demo model counts Mall well; training labels that say every frame is empty make it
    worse on the (correct) held-back frames: the camera keeps its model, the YAML is untouched."""
    pts = points_of(mall)
    _, held = split_holdout(list(range(len(PICK))), 0.25, 0)  # the split adapt will make
    wrong = [{"points": p} if i in held else {"count": 0} for i, p in enumerate(pts)]
    cfg, _ = make_site(tmp_path, mall, wrong)
    before = cfg.read_text()
    assert adapt(cfg, "--base", str(DEMO), "--steps", "6", "--lr", "1e-4") == 1
    out = capsys.readouterr().out
    assert "camera mall keeps its base model" in out and "nothing written" in out
    adapted, base = (float(out.split(f"{k} MAE ")[1].split(",")[0].split(";")[0])
                     for k in ("adapted", "base"))
    assert adapted > base
    assert cfg.read_text() == before


# -- snapshot, config, refusal ----------------------------------------------------------------


def test_snapshot_is_the_pipeline_frame_at_full_resolution(tmp_path: Path,
                                                           mall: dict[str, Any]) -> None:
    cfg, lab = make_site(tmp_path, mall)
    assert cli(["snapshot", "mall", "--config", str(cfg), "--at", "69"]) == 0
    (entry,) = read_labels(lab / "labels.json", "mall").entries
    assert entry.kind == "unlabeled" and entry.image.endswith("-f000690.jpg")
    saved = cv2.imread(str(lab / entry.image))
    assert saved.shape == (480, 640, 3)
    diff = np.abs(saved.astype(int) - mall["frames"][690].astype(int)).mean()
    assert diff < 2.0  # the same frame, JPEG at quality 95


def test_camera_model_config_and_a_missing_camera_model(tmp_path: Path, mall: dict[str, Any],
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    cfg, _ = make_site(tmp_path, mall)
    text = cfg.read_text()
    both = text.replace("    realtime: false        # keep it a file\n",
                        "    realtime: false\n    model: {checkpoint: a.pt, name: x}\n")
    cfg.write_text(both)
    assert cli(["config", "validate", str(cfg)]) == 2
    assert "cameras.mall.model: set exactly one of checkpoint, engine and name" in \
        capsys.readouterr().err
    cfg.write_text(text.replace("run_dir: run ", "defaults: {model: {name: x}}\nrun_dir: run "))
    assert cli(["config", "validate", str(cfg)]) == 2
    assert "defaults.model: a model for every camera is the top-level model: section" in \
        capsys.readouterr().err
    cfg.write_text(text.replace("    realtime: false        # keep it a file\n",
                                f"    realtime: false\n    model: {{checkpoint: {DEMO}}}\n"))
    assert load_config(cfg).cameras["mall"].model.checkpoint == str(DEMO)
    assert cli(["config", "validate", str(cfg)]) == 0
    assert f"own model {DEMO}" in capsys.readouterr().out
    # the run counts the camera with it (tests/test_pipeline.py); a missing file is one line
    cfg.write_text(text.replace("    realtime: false        # keep it a file\n",
                                "    realtime: false\n    model: {checkpoint: gone.pt}\n"))
    assert cli(["run", str(cfg), "--metrics-port", "none", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cameras.mall.model.checkpoint: checkpoint file of camera 'mall' not found" in err


# -- the pieces --------------------------------------------------------------------------------


def test_training_forward_is_the_pipeline_tiling() -> None:
    """The differentiable stitch equals engines.predict on a frame needing several overlapping
    windows and padding."""
    model = create_model(small_spec("ebc-tiny-rn").replace(window=(96, 128))).eval()
    img = np.random.default_rng(1).integers(0, 255, (150, 300, 3), dtype=np.uint8)
    for overlap in (0.0, 0.25):
        geo = Geometry(model, 150, 300, overlap=overlap)
        assert geo.layout.count > 4
        with torch.no_grad():
            _, dens = forward_frames(model, torch.from_numpy(to_tensor_layout(img))[None],
                                     geo.layout)
        np.testing.assert_allclose(dens[0].numpy(), predict(model, img, overlap=overlap).map,
                                   atol=1e-4)


def test_footage_losses_are_blind_to_a_common_scale_and_rank_nested_crops() -> None:
    gap = float(relative_gap(torch.tensor(30.0), torch.tensor(34.0)))
    # every count doubled: (nearly) the same loss, where |a - b| would double
    assert abs(float(relative_gap(torch.tensor(60.0), torch.tensor(68.0))) - gap) < 0.01
    assert float(ranking_loss(torch.tensor([10.0, 8.0, 3.0]))) == 0.0
    assert float(ranking_loss(torch.tensor([10.0, 12.0, 3.0]))) > 0.0
    assert float(anchor_loss(torch.tensor([11.0]), torch.tensor([10.0]))) == pytest.approx(1 / 11)
    geo = Geometry(create_model(small_spec("ebc-tiny-rn").replace(window=(224, 224))),
                   480, 640)
    rng = np.random.default_rng(3)
    for _ in range(50):
        boxes = nested_boxes(geo, rng)
        for (y, x, h, w), (iy, ix, ih, iw) in zip(boxes, boxes[1:], strict=False):
            assert y <= iy and x <= ix and iy + ih <= y + h and ix + iw <= x + w
            assert ih * iw < h * w
        y, x, h, w = boxes[0]
        assert y + h <= 480 // 8 and x + w <= 640 // 8 and h <= 28 and w <= 28


def test_split_holdout_keeps_one_to_train_on() -> None:
    assert [len(p) for p in split_holdout(list(range(1)), 0.25)] == [0, 1]
    assert [len(p) for p in split_holdout(list(range(2)), 0.25)] == [1, 1]
    assert [len(p) for p in split_holdout(list(range(8)), 0.25)] == [6, 2]
    assert split_holdout(list(range(8)), 0.25, 5) == split_holdout(list(range(8)), 0.25, 5)


def test_batchnorm_statistics_change_only_with_adabn(mall: dict[str, Any]) -> None:
    """By default the base model's BatchNorm statistics are kept (new ones move the count
    level); ``adabn=True`` re-estimates them on the camera's frames."""
    frames = dict(read_frames(str(mall["video"]), range(0, 12), fmt="rgb24"))
    pairs = [FootagePair(frames[i], frames[i + 2], 0.2) for i in range(0, 10, 3)]
    base, _ = load_checkpoint(DEMO)

    def stats(m: torch.nn.Module) -> list[torch.Tensor]:
        return [b.clone() for n, b in m.named_buffers() if n.endswith("running_mean")]

    kept = Adapter(base, AdaptSettings(steps=0, time_limit_s=None)).run([], pairs).model
    redone = Adapter(base, AdaptSettings(steps=0, time_limit_s=None, adabn=True)).run([], pairs)
    assert all(torch.equal(a, b) for a, b in zip(stats(base), stats(kept), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(stats(base), stats(redone.model),
                                                      strict=True))


def test_footage_only_keeps_the_level(mall: dict[str, Any]) -> None:
    """Ranking and consistency alone would let counts sink; with the anchor the level of the
    starting model (the demo model) stays within 10% on Mall footage after adaptation."""
    frames = dict(read_frames(str(mall["video"]), range(0, 62), fmt="rgb24"))
    pairs = [FootagePair(frames[i], frames[i + 2], 0.2) for i in range(0, 60, 12)]
    base, _ = load_checkpoint(DEMO)
    start = Adapter(base, AdaptSettings(steps=0, time_limit_s=None)).run([], pairs).model
    result = Adapter(base, AdaptSettings(steps=5, time_limit_s=None)).run([], pairs)
    before = np.mean([predict(start, p.first).count for p in pairs])
    after = np.mean([predict(result.model, p.first).count for p in pairs])
    assert abs(after - before) < 0.1 * before
    assert {"rank", "temporal", "anchor"} <= set(result.history[0])


def test_adapter_refuses_frames_of_another_size(mall: dict[str, Any]) -> None:
    base, _ = load_checkpoint(DEMO)
    frames = [LabeledFrame("a", mall["frames"][PICK[0]][:, :, ::-1].copy(), count=3.0),
              LabeledFrame("b", np.zeros((240, 320, 3), np.uint8), count=0.0)]
    with pytest.raises(ValueError, match="frame is 320x240, the camera's frames are 640x480"):
        Adapter(base, AdaptSettings(steps=1)).run(frames)


# -- exports as the tools write them ------------------------------------------------------------


def _labelstudio(names: list[str], pts: list[list[list[float]]]) -> str:
    tasks = []
    for i, (name, p) in enumerate(zip(names, pts, strict=True), 1):
        result = [{"id": f"k{i}_{j}", "type": "keypointlabels", "from_name": "kp",
                   "to_name": "image", "original_width": 640, "original_height": 480,
                   "image_rotation": 0,
                   "value": {"x": x / 6.4, "y": y / 4.8, "width": 0.4,
                             "keypointlabels": ["Head"]}} for j, (x, y) in enumerate(p)]
        tasks.append({"id": i, "data": {"image": f"/data/upload/1/{i:08x}-{name}"},
                      "annotations": [{"id": i, "completed_by": 1, "result": result,
                                       "was_cancelled": False, "ground_truth": False,
                                       "lead_time": 30.0}],
                      "predictions": [], "project": 1})
    return json.dumps(tasks, indent=1)


def _cvat(names: list[str], pts: list[list[list[float]]]) -> str:
    images = "".join(
        f'  <image id="{i}" name="{name}" width="640" height="480">\n'
        + "".join(f'    <points label="head" source="manual" occluded="0" '
                  f'points="{x:.2f},{y:.2f}" z_order="0">\n    </points>\n' for x, y in p)
        + "  </image>\n" for i, (name, p) in enumerate(zip(names, pts, strict=True)))
    return ('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
            "  <meta>\n    <task>\n      <name>mall</name>\n      <mode>annotation</mode>\n"
            "      <labels>\n        <label>\n          <name>head</name>\n"
            "          <type>points</type>\n        </label>\n      </labels>\n    </task>\n"
            f"  </meta>\n{images}</annotations>\n")


def _coco(names: list[str], pts: list[list[list[float]]]) -> str:
    anns = [{"id": len(names) * 1000 + i * 100 + j, "image_id": i, "category_id": 1,
             "keypoints": [x, y, 2], "num_keypoints": 1, "bbox": [x - 6, y - 6, 12, 12],
             "area": 144, "iscrowd": 0}
            for i, p in enumerate(pts) for j, (x, y) in enumerate(p)]
    return json.dumps({
        "info": {"description": "mall heads"}, "licenses": [],
        "images": [{"id": i, "file_name": n, "width": 640, "height": 480}
                   for i, n in enumerate(names)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "head", "supercategory": "person",
                        "keypoints": ["head"], "skeleton": []}]})


EXPORTERS = {"labelstudio": _labelstudio, "cvat": _cvat, "coco": _coco}



def test_live_camera_snapshot_and_footage_for_minutes(tmp_path: Path, tiny_base: Path,
                                                      rtsp_server: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A live RTSP camera: a snapshot is its next frame; footage is recorded for --minutes of
    wall time (and refused without it)."""
    url = rtsp_server.url()
    cfg = tmp_path / "live.yaml"
    cfg.write_text(f"run_dir: run\nmodel: {{checkpoint: {tiny_base}}}\n"
                   f"cameras:\n  gate:\n    url: {url}   # a live camera\n")
    assert cli(["snapshot", "gate", "--config", str(cfg)]) == 0
    (entry,) = read_labels(tmp_path / "run" / "labels" / "gate" / "labels.json", "gate").entries
    assert cv2.imread(str(tmp_path / "run" / "labels" / "gate" / entry.image)).shape == \
        (240, 320, 3)
    args = ["adapt", "gate", "--config", str(cfg), "--footage", url, "--base", str(tiny_base),
            "--threads", "1",
            "--quiet", "--accept-unverified", "--steps", "2", "--pairs", "3"]
    assert cli(args) == 2
    assert "is live: give --minutes N" in capsys.readouterr().err
    assert cli([*args, "--minutes", "0.05"]) == 0
    ckpt = Path(load_config(cfg).cameras["gate"].model.checkpoint)
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert report["footage"] == url and report["footage_pairs"] == 3


def test_roi_and_zones_count_as_the_pipeline_counts(mall: dict[str, Any], tiny_base: Path) -> None:
    """With an ROI (the left half), a points frame's true count is the heads inside it and the
    prediction the masked map's sum; zone counts use the masked map too; training runs with
    both."""
    model, _ = load_checkpoint(tiny_base)
    i = PICK[3]
    rgb = np.ascontiguousarray(mall["frames"][i][:, :, ::-1])
    pts = np.asarray(mall["points"][i], np.float32)

    def left(shape: tuple[int, int], frame: tuple[int, int], cell: float) -> np.ndarray:
        m = np.zeros(shape, np.float32)
        m[:, : shape[1] // 2] = 1.0
        return m

    dens = predict(model, rgb).map
    (s,) = score(model, [LabeledFrame("p", rgb, pts)], left).frames
    assert s.true == float((pts[:, 0] < 320).sum())
    assert s.pred == pytest.approx(float(dens[:, :20].sum()), rel=1e-5)
    right = zone_fn([[0.5, 0], [1, 0], [1, 1], [0.5, 1]])
    whole = zone_fn([[0, 0], [1, 0], [1, 1], [0, 1]])
    zones = LabeledFrame("z", rgb, zones={"right": (right, 7.0), "all": (whole, 9.0)})
    (z,) = score(model, [zones], left).frames
    assert z.true == 16.0 and z.pred == pytest.approx(s.pred, rel=1e-4)  # right: 0 inside ROI
    assert z.error == pytest.approx(7.0 + abs(s.pred - 9.0), rel=1e-4)
    result = Adapter(model, AdaptSettings(steps=2, time_limit_s=None, lr=1e-3),
                     roi=left).run([LabeledFrame("c", rgb, count=5.0), zones])
    assert {"count_l1", "zones_l1"} <= {k for h in result.history for k in h}


def test_the_base_is_given_else_the_general_model_else_the_cameras(
        tmp_path: Path, mall: dict[str, Any], tiny_base: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.adapt as pa

    cfg, _ = make_site(tmp_path, mall)
    app = load_config(cfg)
    assert pa.resolve_base(app, "mall", str(tiny_base)) == (tiny_base, f"--base {tiny_base}")
    with pytest.raises(pa.AdaptError, match="--base nope.pt: no such checkpoint file"):
        pa.resolve_base(app, "mall", "nope.pt")
    monkeypatch.setattr(pa, "GENERAL_MODEL", tmp_path / "models" / "general.pt")
    assert pa.resolve_base(app, "mall", None)[0] == DEMO  # not shipped: the camera's model
    general = tmp_path / "models" / "general.pt"
    general.parent.mkdir()
    general.write_bytes(tiny_base.read_bytes())
    assert pa.resolve_base(app, "mall", None) == (general, "the general model")
    monkeypatch.setattr(pa, "GENERAL_MODEL", tmp_path / "gone.pt")
    engine = cfg.read_text().replace(f"  checkpoint: {DEMO}", "  engine: m.onnx")
    cfg.write_text(engine)
    with pytest.raises(pa.AdaptError, match="exported engine .*cannot be fine-tuned"):
        pa.resolve_base(load_config(cfg), "mall", None)
