"""The site labels file (engines.train.sitelabels) and the imports from labeling tools
(engines.train.labelimport): Label Studio, CVAT and COCO exports written by hand as the tools
write them, read into our labels file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.train.labelimport import detect_format, import_export
from engines.train.sitelabels import LabelEntry, LabelsError, labels_path, read_labels, write_labels
from pipeline.cli import main as cli

W, H = 640, 480
POINTS = {"snap_a.jpg": [[100.5, 200.25], [320.0, 240.0], [600.75, 50.5]],
          "snap_b.jpg": [[10.0, 470.0]]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A labels folder holding two saved frames (as `crowdstream snapshot` leaves them) and an
    empty one, not labeled yet."""
    lab = labels_path(tmp_path / "run", "lobby").parent
    lab.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for name in [*POINTS, "snap_c.jpg"]:
        cv2.imwrite(str(lab / name), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        entries.append({"image": name, "captured_at": "2025-01-01T10:00:00"})
    (lab / "labels.json").write_text(json.dumps({"camera": "lobby", "images": entries}))
    return lab


def test_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"camera": "lobby", "source": "console v1", "images": [
        {"image": "a.jpg", "points": [[1, 2], [3.5, 4]], "labeled_by": "ann"},
        {"image": "b.jpg", "count": 12},
        {"image": "c.jpg", "zone_counts": {"door": 3, "hall": 0}},
        {"image": "d.jpg"}]}))
    labels = read_labels(path, "lobby")
    assert [e.kind for e in labels.entries] == ["points", "count", "zones", "unlabeled"]
    assert [e.total for e in labels.entries] == [2.0, 12.0, None, None]
    write_labels(labels.upsert(LabelEntry("d.jpg", count=4)))
    again = json.loads(path.read_text())
    assert again["source"] == "console v1"
    assert again["images"][0] == {"image": "a.jpg", "points": [[1.0, 2.0], [3.5, 4.0]],
                                  "labeled_by": "ann"}
    assert again["images"][2] == {"image": "c.jpg", "zone_counts": {"door": 3, "hall": 0}}
    assert again["images"][3] == {"image": "d.jpg", "count": 4}


@pytest.mark.parametrize("content, message", [
    ({"images": []}, "'camera' must name the camera"),
    ({"camera": "lobby", "images": [{"image": "a.jpg", "points": [[1, 2, 3]]}]},
     "images[0]: 'points' must be a list of [x, y]"),
    ({"camera": "lobby", "images": [{"image": "a.jpg", "count": -1}]},
     "images[0]: count: expected a count >= 0"),
    ({"camera": "lobby", "images": [{"image": "a.jpg", "points": [[1, 2]], "count": 2}]},
     "'count' is 2 but 1 points are listed"),
    ({"camera": "lobby", "images": [{"image": "a.jpg"}, {"image": "a.jpg"}]},
     "images[1]: image 'a.jpg' is listed twice"),
    ({"camera": "lobby", "images": [{"image": "../a.jpg"}]}, "must be a file name beside"),
    ({"camera": "gate", "images": []}, "holds frames of camera 'gate', not 'lobby'"),
])
def test_a_wrong_file_is_one_line_naming_the_entry(tmp_path: Path, content: dict,
                                                   message: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content))
    with pytest.raises(LabelsError) as e:
        read_labels(path, "lobby")
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def _check_imported(folder: Path) -> dict[str, LabelEntry]:
    labels = read_labels(folder / "labels.json", "lobby")
    got = {e.image: e for e in labels.entries}
    assert set(got) == {*POINTS, "snap_c.jpg"}
    for name, pts in POINTS.items():
        assert got[name].kind == "points"
        np.testing.assert_allclose(got[name].points, pts, atol=0.02)
        assert got[name].extra == {"captured_at": "2025-01-01T10:00:00"}  # the console's key
    return got


def test_label_studio_keypoints_export(folder: Path, tmp_path: Path) -> None:
    """A Label Studio JSON export: tasks with uploaded images (8-hex prefix), keypoints in percent
    of the original size, a cancelled annotation, a task never annotated, predictions ignored."""
    def kp(x: float, y: float, i: int) -> dict:
        return {"id": f"kp{i}", "type": "keypointlabels", "from_name": "kp", "to_name": "image",
                "original_width": W, "original_height": H, "image_rotation": 0,
                "value": {"x": x / W * 100, "y": y / H * 100, "width": 0.3,
                          "keypointlabels": ["Head"]}}

    tasks = []
    for tid, (name, pts) in enumerate(POINTS.items(), 1):
        tasks.append({
            "id": tid, "data": {"image": f"/data/upload/3/{'1a2b3c4' + str(tid)}-{name}"},
            "annotations": [
                {"id": 10 + tid, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
                 "result": [kp(x, y, i) for i, (x, y) in enumerate(pts)],
                 "created_at": "2025-01-02T10:00:00.000000Z", "lead_time": 12.5},
                {"id": 20 + tid, "completed_by": 2, "was_cancelled": True, "result": []}],
            "predictions": [{"model_version": "v1", "result": [kp(5, 5, 9)]}],
            "meta": {}, "created_at": "2025-01-02T09:00:00.000000Z", "project": 3})
    tasks.append({"id": 9, "data": {"image": "/data/upload/3/deadbeef-snap_c.jpg"},
                  "annotations": [], "predictions": []})
    export = tmp_path / "project-3-at-2025-01-02-10-00-1a2b3c4d.json"
    export.write_text(json.dumps(tasks, indent=2))
    assert detect_format(export) == "labelstudio"
    report = import_export(export, folder / "labels.json", "lobby")
    got = _check_imported(folder)
    assert got["snap_c.jpg"].kind == "unlabeled"  # never annotated: not an empty frame
    assert sorted(report.added) == sorted(POINTS) and report.skipped == ["snap_c.jpg: not "
                                                                         "annotated"]


def test_label_studio_number_gives_a_count_and_sizes_are_scaled(folder: Path,
                                                                tmp_path: Path) -> None:
    tasks = [{"id": 1, "data": {"image": "s3://bucket/cam/snap_b.jpg"}, "annotations": [{
        "id": 1, "was_cancelled": False, "result": [
            {"type": "number", "from_name": "count", "to_name": "image",
             "value": {"number": 17}}]}]},
             {"id": 2, "data": {"image": "s3://bucket/cam/snap_a.jpg"}, "annotations": [{
                 "id": 2, "result": [{"type": "keypointlabels", "from_name": "kp",
                                      "to_name": "image", "original_width": 2 * W,
                                      "original_height": 2 * H,
                                      "value": {"x": 50.0, "y": 25.0, "width": 0.5,
                                                "keypointlabels": ["Head"]}}]}]}]
    export = tmp_path / "ls.json"
    export.write_text(json.dumps(tasks))
    report = import_export(export, folder / "labels.json", "lobby")
    labels = read_labels(folder / "labels.json", "lobby")
    assert labels.get("snap_b.jpg").count == 17 and labels.get("snap_b.jpg").kind == "count"
    np.testing.assert_allclose(labels.get("snap_a.jpg").points, [[W / 2, H / 4]])
    assert report.scaled == ["snap_a.jpg"]  # the tool saw a copy twice the size


def test_cvat_for_images_xml(folder: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """CVAT for images 1.1: <points> shapes per <image> (several points per shape, several
    shapes), a box on one image (not a head point), an image with no shape (an empty frame)."""
    a = POINTS["snap_a.jpg"]
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>lobby heads</name>
      <size>3</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <flipped>False</flipped>
      <labels>
        <label>
          <name>head</name>
          <color>#fa3253</color>
          <type>points</type>
          <attributes>
          </attributes>
        </label>
      </labels>
    </task>
    <dumped>2025-01-02 10:00:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="snap_a.jpg" width="{W}" height="{H}">
    <points label="head" source="manual" occluded="0" points="{a[0][0]},{a[0][1]};{a[1][0]},{a[1][1]}" z_order="0">
    </points>
    <points label="head" source="manual" occluded="1" points="{a[2][0]},{a[2][1]}" z_order="0">
    </points>
  </image>
  <image id="1" name="images/snap_b.jpg" width="{W}" height="{H}">
    <points label="head" source="manual" occluded="0" points="10.00,470.00" z_order="0">
    </points>
    <box label="head" source="manual" occluded="0" xtl="1.0" ytl="2.0" xbr="30.0" ybr="40.0" z_order="0">
    </box>
  </image>
  <image id="2" name="snap_c.jpg" width="{W}" height="{H}">
  </image>
</annotations>
"""
    export = tmp_path / "annotations.xml"
    export.write_text(xml)
    assert detect_format(export) == "cvat"
    assert cli(["labels", "import", "lobby", str(export), "--labels",
                str(folder / "labels.json")]) == 0
    out = capsys.readouterr().out
    assert "imported 3 image(s) from a cvat export" in out and "1 with no points" in out
    got = _check_imported(folder)
    assert got["snap_c.jpg"].kind == "points" and len(got["snap_c.jpg"].points) == 0
    assert cli(["labels", "import", "gate", str(export), "--labels",
                str(folder / "labels.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("holds frames of camera 'lobby', not 'gate'") and "\n" not in err


def test_coco_keypoints_with_images_elsewhere(folder: Path, tmp_path: Path) -> None:
    """COCO keypoints: a one-keypoint 'head' category, a COCO person (face keypoints), a person
    with only a box; the images live in a folder of their own (copied beside the labels), one of
    them at twice the size (points scaled)."""
    elsewhere = tmp_path / "coco_images"
    elsewhere.mkdir()
    img = cv2.imread(str(folder / "snap_a.jpg"))
    (folder / "snap_a.jpg").unlink()
    cv2.imwrite(str(elsewhere / "snap_a.png"), img)  # a PNG: re-encoded as JPEG beside labels
    a = POINTS["snap_a.jpg"]
    person = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
    face = [a[1][0] - 2, a[1][1], 2, a[1][0] + 2, a[1][1] - 1, 2, a[1][0], a[1][1] + 1, 1]
    coco = {
        "info": {"description": "lobby", "version": "1.0", "year": 2025},
        "licenses": [],
        "images": [{"id": 1, "file_name": "snap_a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "snap_b.jpg", "width": 2 * W, "height": 2 * H},
                   {"id": 3, "file_name": "snap_c.jpg", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "head", "supercategory": "person",
                        "keypoints": ["head"], "skeleton": []},
                       {"id": 2, "name": "person", "supercategory": "person",
                        "keypoints": person, "skeleton": [[16, 14], [14, 12]]}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "keypoints": [a[0][0], a[0][1], 2],
             "num_keypoints": 1, "bbox": [a[0][0] - 5, a[0][1] - 5, 10, 10], "area": 100,
             "iscrowd": 0, "segmentation": []},
            {"id": 2, "image_id": 1, "category_id": 2, "keypoints": face + [0] * 3 * 14,
             "num_keypoints": 3, "bbox": [300, 230, 40, 120], "area": 4800, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "keypoints": [0] * 51,
             "num_keypoints": 0, "bbox": [a[2][0] - 10, a[2][1] - 5, 20, 50], "area": 1000,
             "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "keypoints": [20.0, 940.0, 2],
             "num_keypoints": 1, "bbox": [10, 930, 20, 20], "area": 400, "iscrowd": 0}]}
    export = tmp_path / "person_keypoints_default.json"
    export.write_text(json.dumps(coco))
    assert detect_format(export) == "coco"
    report = import_export(export, folder / "labels.json", "lobby", images_dir=elsewhere)
    labels = read_labels(folder / "labels.json", "lobby")
    got = {e.image: e for e in labels.entries}
    assert (folder / "snap_a.jpg").is_file() and report.copied == ["snap_a.jpg"]
    np.testing.assert_allclose(got["snap_a.jpg"].points, a, atol=0.02)  # head, face, box top
    np.testing.assert_allclose(got["snap_b.jpg"].points, POINTS["snap_b.jpg"], atol=0.02)
    assert report.scaled == ["snap_b.jpg"]
    assert got["snap_c.jpg"].kind == "points" and len(got["snap_c.jpg"].points) == 0


def test_import_errors_name_the_file_and_what_to_do(folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(LabelsError, match="not a Label Studio JSON export"):
        import_export(bad, folder / "labels.json", "lobby")
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.jpg"}],
                                "annotations": [], "categories": []}))
    with pytest.raises(LabelsError, match="image 'gone.jpg' not found .*crowdstream snapshot"):
        import_export(coco, folder / "labels.json", "lobby")
    video = tmp_path / "v.xml"
    video.write_text('<annotations><version>1.1</version><track id="0" label="head">'
                     '<points frame="0" points="1,2" outside="0"/></track></annotations>')
    with pytest.raises(LabelsError, match="CVAT for images 1.1"):
        import_export(video, folder / "labels.json", "lobby")
