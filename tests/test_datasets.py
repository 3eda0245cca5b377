"""Dataset readers: each published layout parsed from a small generated sample; bad layouts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from engines.train.datasets import DatasetError, holdout_split, load_dataset, parse_ranges

PTS = np.array([[10.5, 20.0], [30.0, 5.25], [47.0, 40.0]])


def _img(path: Path, h: int = 48, w: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 2] = 200  # red in BGR: checks the RGB conversion
    assert cv2.imwrite(str(path), img)


def _check(samples: list, names: list[str], counts: list[int]) -> None:
    assert [s.name for s in samples] == names
    assert [s.count for s in samples] == counts
    assert samples[0].points.dtype == np.float32 and samples[0].points.shape[1] == 2


def test_shanghaitech(tmp_path: Path) -> None:
    for i, pts in ((1, PTS), (2, PTS[:1]), (10, np.zeros((0, 2)))):
        _img(tmp_path / "images" / f"IMG_{i}.jpg")
        (tmp_path / "ground-truth").mkdir(exist_ok=True)
        # the published layout: image_info is a 1x1 cell holding a struct {location, number}
        info = np.empty((1, 1), dtype=object)
        info[0, 0] = {"location": pts, "number": float(len(pts))}
        savemat(tmp_path / "ground-truth" / f"GT_IMG_{i}.mat", {"image_info": info})
    samples = load_dataset(tmp_path, "shanghaitech")
    _check(samples, ["IMG_1", "IMG_2", "IMG_10"], [3, 1, 0])  # numeric order, not 1, 10, 2
    np.testing.assert_allclose(samples[0].points, PTS)
    rgb = samples[0].load_rgb()
    assert rgb.shape == (48, 64, 3) and rgb[0, 0, 0] > 150 and rgb[0, 0, 2] < 50


def test_qnrf(tmp_path: Path) -> None:
    _img(tmp_path / "img_0001.jpg")
    savemat(tmp_path / "img_0001_ann.mat", {"annPoints": PTS})
    _img(tmp_path / "img_0002.jpg")
    savemat(tmp_path / "img_0002_ann.mat", {"annPoints": PTS[:2]})
    _check(load_dataset(tmp_path, "qnrf"), ["img_0001", "img_0002"], [3, 2])


def test_nwpu_json_mat_and_split(tmp_path: Path) -> None:
    for i in ("0001", "0002", "0003"):
        _img(tmp_path / "images" / f"{i}.jpg")
    (tmp_path / "jsons").mkdir()
    (tmp_path / "mats").mkdir()
    (tmp_path / "jsons" / "0001.json").write_text(json.dumps(
        {"img_id": "0001.jpg", "human_num": 3, "points": PTS.tolist(), "boxes": []}))
    savemat(tmp_path / "mats" / "0002.mat", {"annPoints": PTS[:2]})
    (tmp_path / "train.txt").write_text("0001 1 1\n0002 2 1\n")
    _check(load_dataset(tmp_path, "nwpu", split="train"), ["0001", "0002"], [3, 2])
    # without a split, unannotated (test) images are skipped
    _check(load_dataset(tmp_path, "nwpu"), ["0001", "0002"], [3, 2])


def test_jhu(tmp_path: Path) -> None:
    root = tmp_path / "jhu_crowd_v2.0"
    _img(root / "val" / "images" / "0001.jpg")
    (root / "val" / "gt").mkdir(parents=True)
    (root / "val" / "gt" / "0001.txt").write_text("10 20 4 4 1 0\n30 5 6 6 2 0\n")
    samples = load_dataset(root, "jhu", split="val")
    _check(samples, ["0001"], [2])
    np.testing.assert_allclose(samples[0].points, [[10, 20], [30, 5]])


def test_json_images_and_frames(tmp_path: Path) -> None:
    _img(tmp_path / "shb" / "IMG_1.jpg")
    (tmp_path / "shb" / "points.json").write_text(json.dumps(
        {"images": [{"image": "IMG_1.jpg", "count": 3, "points": PTS.tolist()}]}))
    _check(load_dataset(tmp_path / "shb", "json"), ["IMG_1"], [3])

    mall = tmp_path / "mall"
    frames = []
    for i in (2, 0, 1):  # listed out of order: frames are sorted by frame_index
        _img(mall / "frames_train" / f"seq_{i + 1:06d}.jpg")
        frames.append({"frame_index": i, "image": f"seq_{i + 1:06d}.jpg", "count": i,
                       "points": PTS[:i].tolist()})
    (mall / "train_points.json").write_text(json.dumps({"frames": frames}))
    samples = load_dataset(mall, "json", select="2-3")
    assert [s.frame_index for s in samples] == [1, 2]
    _check(samples, ["seq_000002", "seq_000003"], [1, 2])


def test_real_mall_layout(shared_data: Path) -> None:
    samples = load_dataset(shared_data / "mall", "json", select="701-800")
    assert len(samples) == 100 and samples[0].frame_index == 700
    assert all(10 <= s.count <= 60 for s in samples)


@pytest.mark.parametrize("fmt, expected", [
    ("shanghaitech", "expected an 'images/' folder"),
    ("nwpu", "expected an 'images/' folder"),
    ("jhu", "expected an 'images/' folder"),
    ("json", "expected points.json"),
])
def test_wrong_layout_says_what_was_expected(tmp_path: Path, fmt: str, expected: str) -> None:
    _img(tmp_path / "IMG_1.jpg")
    with pytest.raises(DatasetError, match=expected):
        load_dataset(tmp_path, fmt)


def test_missing_annotation_and_bad_file(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "IMG_1.jpg")
    (tmp_path / "ground-truth").mkdir()
    with pytest.raises(DatasetError, match=r"GT_IMG_1\.mat: expected the annotation of IMG_1"):
        load_dataset(tmp_path, "shanghaitech")
    _img(tmp_path / "q" / "img_0001.jpg")
    savemat(tmp_path / "q" / "img_0001_ann.mat", {"wrong": PTS})
    with pytest.raises(DatasetError, match="annPoints"):
        load_dataset(tmp_path / "q", "qnrf")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "points.json").write_text(json.dumps(
        {"images": [{"image": "nope.jpg", "points": []}]}))
    with pytest.raises(DatasetError, match=r"images\[0\]: image 'nope.jpg' not found"):
        load_dataset(tmp_path / "j", "json")
    with pytest.raises(DatasetError, match="unknown dataset format 'coco'"):
        load_dataset(tmp_path, "coco")


def test_ranges_and_holdout() -> None:
    assert parse_ranges("1-3,7", 10) == [0, 1, 2, 6]
    with pytest.raises(DatasetError, match="outside 1-10"):
        parse_ranges("5-11", 10)
    with pytest.raises(DatasetError, match="not N or N-M"):
        parse_ranges("a-b", 10)
    from engines.train.datasets import Sample

    items = [Sample(str(i), Path("x"), np.zeros((0, 2), np.float32)) for i in range(20)]
    train, val = holdout_split(items, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert not {s.name for s in train} & {s.name for s in val}
    assert [s.name for s in holdout_split(items, 0.25, seed=3)[1]] == [s.name for s in val]
