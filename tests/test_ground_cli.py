"""``crowdstream calibrate ground`` end to end on temporary configs, the YAML store and the preview."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from test_ground import CLICKS, FRAME, SHAPE
from test_ground_camera import analytic_cell_areas, ground_to_image_matrix, project

from calibrate.ground import GroundCalibration
from calibrate.preview import render_preview
from engines.yamledit import dump_with_calibration, update_calibration_text, yaml_float
from pipeline.cli import main as cli
from pipeline.config import ZoneConfig, load_config

REPO = Path(__file__).resolve().parent.parent
DEMO_CLIP = REPO / "configs" / "demo" / "mall_demo.mp4"
CAMERA = ground_to_image_matrix(tilt_deg=18.0, roll_deg=4.0)  # horizon in view, near row 45


def _point_lines(clicks: np.ndarray, indent: str = "        ") -> str:
    gnd = project(np.linalg.inv(CAMERA), clicks)
    return "".join(f"{indent}- {{image: [{x!r}, {y!r}], ground: [{a!r}, {b!r}]}}\n"
                   for (x, y), (a, b) in zip(clicks.tolist(), gnd.tolist(), strict=True))


def _site(tmp_path: Path, points: str, url: str = "frame.png") -> Path:
    text = (
        "# site config: this comment must survive\n"
        "cameras:\n"
        "  lobby:\n"
        f"    url: {url}  # the camera\n"
        "    zones:\n"
        "      - {name: entrance, polygon: [[0.1, 0.6], [0.5, 0.6], [0.5, 0.95], [0.1, 0.95]]}\n"
        "    calibration:\n"
        "      # measured with a tape\n"
        "      points:\n"
        f"{points}"
        "      image_size: [640, 480]  # the camera's frame\n"
        "      max_reprojection_error_m: 0.3  # metres\n"
        "  other: {url: other.mp4}\n"
    )
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def _frame(tmp_path: Path, size: tuple[int, int] = (640, 480)) -> Path:
    w, h = size
    img = np.full((h, w, 3), 90, np.uint8)
    img[h // 2 :] = 140  # a floor
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), img)
    return path


def test_cli_fits_stores_in_place_and_previews(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _site(tmp_path, _point_lines(CLICKS))
    before = cfg.read_text()
    frame = _frame(tmp_path, (1280, 960))  # preview on a frame twice the calibration size
    png = tmp_path / "out" / "preview.png"
    rc = cli(["calibrate", "ground", "lobby", "--config", str(cfg), "--image", str(frame),
              "--preview", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "fitting 8 points on a 640x480 image" in out and "point 7:" in out
    assert "overall: rms 0.0000 m" in out and "horizon: image row 45" in out
    assert "zone entrance:" in out and f"stored: cameras.lobby.calibration.{{image_size, homography}} in {cfg}" in out
    after = cfg.read_text()
    # everything but the new keys is kept byte for byte, comments included
    assert after.startswith(before.split("      image_size:")[0])
    assert "# measured with a tape" in after and "max_reprojection_error_m: 0.3  # metres" in after
    assert "      image_size: [640, 480]  # the camera's frame\n" in after
    assert "  other: {url: other.mp4}\n" in after and after.count("image_size:") == 1
    cam = load_config(cfg).cameras["lobby"]
    assert cam.calibration is not None and cam.calibration.homography is not None
    cal = GroundCalibration.from_config(cam.calibration, FRAME, camera="lobby")
    assert cal.report is not None and cal.report.max_m < 1e-4
    want = analytic_cell_areas(CAMERA, SHAPE, 8.0, FRAME)
    got = cal.cell_area_m2(SHAPE, 8.0)
    # the far field under the horizon (row 45) is cut by max_metres_per_pixel (0.1 by default)
    assert np.all(want[got > 0] > 0) and 0 < np.sum((want > 0) & (got == 0)) < 20 * 80
    assert np.abs(got - want)[got > 0].max() / want[got > 0].min() < 1e-3
    img = cv2.imread(str(png))
    assert img is not None and img.shape == (960, 1280, 3)
    assert (img != cv2.imread(str(frame))).any(axis=2).mean() > 0.02  # a grid was drawn
    # a second run replaces the stored keys in place: same file
    assert cli(["calibrate", "ground", "lobby", "--config", str(cfg), "--image", str(frame)]) == 0
    assert cfg.read_text() == after


def test_cli_refuses_with_the_reason_and_leaves_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gnd = project(np.linalg.inv(CAMERA), CLICKS)
    gnd[2] += [1.0, 0.5]  # one wrong measurement
    lines = "".join(f"        - {{image: [{x!r}, {y!r}], ground: [{a!r}, {b!r}]}}\n"
                    for (x, y), (a, b) in zip(CLICKS.tolist(), gnd.tolist(), strict=True))
    cfg = _site(tmp_path, lines)
    before = cfg.read_text()
    rc = cli(["calibrate", "ground", "lobby", "--config", str(cfg), "--image-size", "640x480"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "refused (reprojection_error): point 2 is" in cap.err
    assert "  point 2: image (630.0, 470.0) px" in cap.out  # per-point errors still shown
    assert cfg.read_text() == before
    rc = cli(["calibrate", "ground", "lobby", "--config", str(cfg), "--image-size", "640x480",
              "--point", "10,10:0,0", "--point", "100,10:1,0", "--point", "10,100:0,1",
              "--point", "700,400:5,5"])
    assert rc == 1 and "refused (off_image): point 3 (700, 400) is off the 640x480" in capsys.readouterr().err
    assert cli(["calibrate", "ground", "lobby", "--config", str(cfg), "--point", "10,10"]) == 2
    assert "expected X,Y:GX,GY" in capsys.readouterr().err
    assert cli(["calibrate", "ground", "nope", "--config", str(cfg)]) == 2
    assert "no camera 'nope'" in capsys.readouterr().err
    assert cfg.read_text() == before


def test_cli_points_on_the_command_line_first_frame_of_the_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # camera 'other' has no calibration section: it is added; the frame comes from the clip (PyAV)
    cfg = _site(tmp_path, _point_lines(CLICKS), url=str(DEMO_CLIP))
    text = cfg.read_text().replace("  other: {url: other.mp4}\n", f"  other:\n    url: {DEMO_CLIP}\n")
    cfg.write_text(text)
    gnd = project(np.linalg.inv(CAMERA), CLICKS)
    args = [a for (x, y), (gx, gy) in zip(CLICKS, gnd, strict=True)
            for a in ("--point", f"{x},{y}:{gx},{gy}")]
    png = tmp_path / "other.png"
    rc = cli(["calibrate", "ground", "other", "--config", str(cfg), *args, "--preview", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    cam = load_config(cfg).cameras["other"]
    assert cam.calibration is not None and len(cam.calibration.points) == 8
    assert cam.calibration.image_size == (640, 480)
    img = cv2.imread(str(png))
    assert img is not None and img.shape == (480, 640, 3)
    # --dry-run and --output leave the config alone
    before = cfg.read_text()
    assert cli(["calibrate", "ground", "other", "--config", str(cfg), "--dry-run"]) == 0
    elsewhere = tmp_path / "copy.yaml"
    assert cli(["calibrate", "ground", "other", "--config", str(cfg), "--output", str(elsewhere)]) == 0
    assert cfg.read_text() == before and "homography:" in elsewhere.read_text()


def test_cli_bare_url_camera_gets_a_calibrated_copy(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bare.yaml"
    frame = _frame(tmp_path)
    cfg.write_text(f"# comment\ncameras:\n  lobby: {frame}\n")
    gnd = project(np.linalg.inv(CAMERA), CLICKS)
    args = [a for (x, y), (gx, gy) in zip(CLICKS, gnd, strict=True)
            for a in ("--point", f"{x},{y}:{gx},{gy}")]
    assert cli(["calibrate", "ground", "lobby", "--config", str(cfg), *args]) == 0
    assert "without comments" in capsys.readouterr().out
    copy = tmp_path / "bare.calibrated.yaml"
    assert cfg.read_text() == f"# comment\ncameras:\n  lobby: {frame}\n"
    cam = load_config(copy).cameras["lobby"]
    assert cam.url == str(frame) and cam.calibration is not None
    GroundCalibration.from_config(cam.calibration, FRAME)


def test_cli_perspective_map_camera(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "p.npy", np.full((48, 64), 4.0, np.float32))
    cfg = tmp_path / "p.yaml"
    cfg.write_text("cameras:\n  c:\n    url: x.mp4\n    zones:\n"
                   "      - {name: all, polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]}\n"
                   "    calibration:\n      perspective_map: p.npy\n"
                   "      perspective_units_per_m: 2.0\n")
    assert cli(["calibrate", "ground", "c", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    # area weight 4, 2 px/m where p = 1: 4^1.5 / 2^2 = 2 m^2 per map pixel, 48 x 64 of them
    assert "ground in view 6144.0 m²" in out and "zone all: 6144.00 m²" in out


# ---- the YAML store ---------------------------------------------------------------------------------

UPDATES = {"image_size": [640, 480], "homography": [[1e-05, 2.0, -3.5], [0.0, 1.25, 7.0],
                                                    [1.5e-20, -0.5, 1.0]]}


@pytest.mark.parametrize("text", [
    "cameras:\n  a:\n    url: x\n    calibration:\n      homography:\n      - [1, 0, 0]\n"
    "      - [0, 1, 0]\n      - [0, 0, 1]\n      image_size: [1, 1]\n    fps: 5\n",
    "cameras:\n    a:\n        url: x  # c\n\n        # trailing comment\n    b:\n        url: y\n",
    "cameras:\n  'a':\n    url: x\n    calibration: null\n",
    "defaults:\n  fps: 2\ncameras:\n  a:\n    url: x\n    calibration:\n      max_reprojection_error_m: 1.0\n",
])
def test_store_edits_block_layouts(text: str) -> None:
    new = update_calibration_text(text, "a", UPDATES)
    assert new is not None
    data = yaml.safe_load(new)
    cal = data["cameras"]["a"]["calibration"]
    assert cal["homography"] == UPDATES["homography"] and cal["image_size"] == [640, 480]
    old = yaml.safe_load(text)
    old["cameras"]["a"]["calibration"] = {**(old["cameras"]["a"].get("calibration") or {}), **UPDATES}
    assert data == old
    for line in text.splitlines():
        if line.strip().startswith("#") or "fps" in line:
            assert line in new.splitlines()


@pytest.mark.parametrize("text", ["cameras: {a: {url: x}}\n", "cameras:\n  a: x\n",
                                  "cameras:\n  a: {url: x, calibration: {}}\n"])
def test_store_refuses_layouts_it_cannot_edit(text: str) -> None:
    assert update_calibration_text(text, "a", UPDATES) is None
    data = yaml.safe_load(dump_with_calibration(text, "a", UPDATES))
    assert data["cameras"]["a"]["calibration"]["homography"] == UPDATES["homography"]


def test_yaml_float_round_trips() -> None:
    for v in (1e-05, -2.5e-20, 3.0, 0.1 + 0.2, 1.2345678901234567e+30):
        assert yaml.safe_load(yaml_float(v)) == v


def test_preview_draws_zones_and_checks_the_size() -> None:
    cal = GroundCalibration.from_homography(np.linalg.inv(CAMERA), FRAME)
    frame = np.zeros((480, 640, 3), np.uint8)
    zones = [ZoneConfig(name="z", polygon=[(0.1, 0.6), (0.5, 0.6), (0.5, 0.95)]),
             ZoneConfig(name="sky", polygon=[(0.0, 0.0), (1.0, 0.0), (1.0, 0.05)])]
    img = render_preview(frame, cal, zones=zones, title="t")
    assert img.shape == frame.shape and img.any() and not frame.any()
    with pytest.raises(ValueError, match="calibration was built for 640x480"):
        render_preview(np.zeros((240, 320, 3), np.uint8), cal)
