"""Ground-plane calibration math: fits, refusals, cell and zone areas, densities, perspective maps."""

from __future__ import annotations

import numpy as np
import pytest
from test_ground_camera import (
    analytic_cell_areas,
    camera_pose,
    ground_to_image_matrix,
    pixel_depths,
    project,
)

from calibrate.ground import (
    CalibrationError,
    GroundCalibration,
    perspective_pixel_area_m2,
    zone_density_m2,
)
from pipeline.config import CalibrationConfig, GroundPointConfig

FRAME = (480, 640)  # (h, w)
SHAPE, CELL = (60, 80), 8.0
GROUND = np.array([[-3, 5], [3, 5], [4, 12], [-4, 12], [0, 8], [2, 20], [-2, 16], [1, 6]], float)
# where a user would click: spread over the frame (all below the horizon of the cameras used here)
CLICKS = np.array([[20, 120], [620, 110], [630, 470], [10, 460], [320, 300], [180, 200],
                   [470, 380], [330, 140]], float)


def _points(g: np.ndarray, ground: np.ndarray = GROUND) -> np.ndarray:
    return project(g, ground)


def _measured(g: np.ndarray, clicks: np.ndarray = CLICKS) -> np.ndarray:
    """The ground positions (metres) of image points, as a tape measure would give them."""
    return project(np.linalg.inv(g), clicks)


def _rel_err(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    m = want > 0
    return np.abs(got[m] - want[m]) / want[m]


@pytest.mark.parametrize("tilt,yaw,roll", [(30.0, 0.0, 0.0), (18.0, 15.0, 6.0), (45.0, -20.0, -4.0)])
def test_fitted_cell_areas_match_the_known_camera(tilt: float, yaw: float, roll: float) -> None:
    g = ground_to_image_matrix(tilt_deg=tilt, yaw_deg=yaw, roll_deg=roll)
    cal = GroundCalibration.from_points(CLICKS, _measured(g), FRAME)
    want = analytic_cell_areas(g, SHAPE, CELL, FRAME)
    got = cal.cell_area_m2(SHAPE, CELL)
    assert got.shape == SHAPE
    np.testing.assert_array_equal(got > 0, want > 0)  # same horizon mask
    assert _rel_err(got, want).max() < 1e-6
    assert cal.report is not None and cal.report.max_m < 1e-6 and not cal.report.exact


def test_noisy_clicks_still_give_close_areas() -> None:
    # 0.3 px of clicking error on 8 points: areas stay within 1% for most cells, 2% at the far
    # corners (extrapolated beyond the points); the fit reports the error it sees
    g = ground_to_image_matrix(tilt_deg=30.0, roll_deg=3.0)
    rng = np.random.default_rng(7)
    img = CLICKS + rng.normal(0.0, 0.3, CLICKS.shape)  # 0.3 px clicking error
    gnd = _measured(g)
    cal = GroundCalibration.from_points(img, gnd, FRAME)
    want = analytic_cell_areas(g, SHAPE, CELL, FRAME)
    err = _rel_err(cal.cell_area_m2(SHAPE, CELL), want)
    assert np.percentile(err, 95) < 0.01 and err.max() < 0.02
    rep = cal.report
    assert rep is not None and len(rep.errors_m) == len(CLICKS)
    assert 0 < rep.rms_m < 0.05 and rep.max_m == rep.errors_m[rep.worst_index]
    assert 0 < rep.rms_px < 1.0
    text = "\n".join(rep.lines(img, gnd))
    assert "point 7" in text and "overall: rms" in text


def test_cells_at_or_above_the_horizon_have_no_area_and_no_density() -> None:
    g = ground_to_image_matrix(tilt_deg=15.0, roll_deg=5.0)  # horizon crosses the frame
    cal = GroundCalibration.from_homography(np.linalg.inv(g), FRAME)
    area = cal.cell_area_m2(SHAPE, CELL)
    a, b, c = cal.horizon() or (0.0, 0.0, 0.0)
    # a cell is kept only if all four corners are strictly on the floor side
    ys, xs = np.mgrid[0 : SHAPE[0] + 1, 0 : SHAPE[1] + 1] * CELL
    side = (a * xs + b * ys + c) * cal.ground_sign > 0
    keep = side[:-1, :-1] & side[:-1, 1:] & side[1:, :-1] & side[1:, 1:]
    np.testing.assert_array_equal(area > 0, keep)
    assert 0 < keep.sum() < keep.size and area[0].max() == 0.0  # top row is sky
    dens = cal.density_m2(np.ones(SHAPE, np.float32), CELL)
    assert np.all(np.isfinite(dens)) and np.all(dens[~keep] == 0) and np.all(dens[keep] > 0)
    with pytest.raises(CalibrationError) as e:
        cal.polygon_area_m2([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)])
    assert e.value.reason == "above_horizon" and "horizon" in str(e.value)
    assert cal.polygon_area_m2([(0.0, 0.6), (1.0, 0.6), (1.0, 1.0), (0.0, 1.0)]) > 0


def test_far_field_cells_coarser_than_the_limit_are_cut() -> None:
    pose = {"tilt_deg": 15.0, "height": 5.0, "f": 600.0}
    g = ground_to_image_matrix(**pose)
    k, r, centre = camera_pose(**pose)
    ys = np.arange(SHAPE[0] + 1) * CELL
    # depth of the floor seen on each row boundary (same along a row for a camera without roll);
    # a pixel there spans depth / f metres across
    rays = np.stack([np.zeros_like(ys), (ys - 240.0) / 600.0, np.ones_like(ys)], axis=1) @ r
    depth = -centre[2] / rays[:, 2]
    across = 0.5 * (depth[:-1] + depth[1:]) / 600.0
    row_ok = (depth[:-1] > 0) & (depth[1:] > 0) & (across <= 0.1)
    cal = GroundCalibration.from_config(
        CalibrationConfig(homography=np.linalg.inv(g).tolist(), image_size=(640, 480)), FRAME)
    assert cal.max_m_per_px == 0.1
    area = cal.cell_area_m2(SHAPE, CELL)
    np.testing.assert_array_equal(area > 0, np.repeat(row_ok[:, None], SHAPE[1], axis=1))
    want = analytic_cell_areas(g, SHAPE, CELL, FRAME)
    assert 0 < (want[~row_ok] > 0).sum() and _rel_err(area, want * row_ok[:, None]).max() < 1e-9
    uncut = GroundCalibration.from_config(CalibrationConfig(
        homography=np.linalg.inv(g).tolist(), image_size=(640, 480), max_metres_per_pixel=None),
        FRAME)
    np.testing.assert_array_equal(uncut.cell_area_m2(SHAPE, CELL) > 0, want > 0)


def _refusal(img: list[list[float]], gnd: list[list[float]], **kw: object) -> CalibrationError:
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_points(np.array(img, float), np.array(gnd, float), FRAME, **kw)
    return e.value


SQUARE_IMG = [[100, 300], [500, 300], [600, 450], [50, 450]]
SQUARE_GND = [[0, 10], [4, 10], [4, 5], [0, 5]]


def test_refuses_too_few_points() -> None:
    e = _refusal(SQUARE_IMG[:3], SQUARE_GND[:3])
    assert e.reason == "too_few_points" and "at least 4 points, got 3" in str(e)


def test_refuses_three_of_four_collinear() -> None:
    img = [[100, 300], [300, 300], [500, 300], [300, 450]]
    e = _refusal(img, SQUARE_GND)
    assert e.reason == "collinear_points" and "image points [0, 1, 2]" in str(e)
    gnd = [[0, 10], [2, 10], [4, 10], [0, 5]]
    e = _refusal(SQUARE_IMG, gnd)
    assert e.reason == "collinear_points" and "ground points" in str(e)


def test_refuses_all_points_on_one_line() -> None:
    img = [[50 + 80 * i, 100 + 40 * i] for i in range(6)]
    gnd = [[i, 2.0 * i + 1] for i in range(6)]
    e = _refusal(img, gnd)
    assert e.reason == "collinear_points" and "all 6 image points lie on one line" in str(e)


def test_five_points_with_three_collinear_are_fine() -> None:
    g = ground_to_image_matrix()
    gnd = np.array([[-2, 6], [0, 6], [2, 6], [-3, 12], [3, 12]], float)
    cal = GroundCalibration.from_points(_points(g, gnd), gnd, FRAME)
    assert cal.report is not None and cal.report.max_m < 1e-6


def test_refuses_duplicates_and_off_image_points() -> None:
    e = _refusal([*SQUARE_IMG, [100.2, 300.1]], [*SQUARE_GND, [1, 7]])
    assert e.reason == "duplicate_points" and "points 0 and 4" in str(e)
    e = _refusal([*SQUARE_IMG, [300, 400]], [*SQUARE_GND, [0, 10]])
    assert e.reason == "duplicate_points" and "ground position" in str(e)
    e = _refusal([[100, 300], [500, 300], [700, 450], [50, 450]], SQUARE_GND)
    assert e.reason == "off_image" and "point 2 (700, 450) is off the 640x480 image" in str(e)
    # the bound is the calibration image's, when the points were taken on another size
    e = _refusal(SQUARE_IMG, SQUARE_GND, image_size=(320, 240))
    assert e.reason == "off_image"


def test_refuses_inconsistent_points_by_reprojection_error() -> None:
    g = ground_to_image_matrix()
    gnd = GROUND.copy()
    gnd[4] += [0.8, -0.5]  # one tape measurement is wrong by ~1 m
    e = _refusal(_points(g).tolist(), gnd.tolist(), max_error_m=0.25)
    assert e.reason == "reprojection_error" and "point 4" in str(e)
    assert "max_reprojection_error_m=0.25" in str(e)
    # a looser bound accepts the same set, and the report names the bad point
    cal = GroundCalibration.from_points(_points(g), gnd, FRAME, max_error_m=5.0)
    assert cal.report is not None and cal.report.worst_index == 4


def test_refuses_swapped_point_order() -> None:
    # ground corners listed in another order than the image corners: the exact 4-point fit puts
    # the horizon through the quadrilateral
    e = _refusal(SQUARE_IMG, [SQUARE_GND[i] for i in (0, 1, 3, 2)])
    assert e.reason == "inconsistent_points" and "both sides of its horizon" in str(e)


# ---- zones and densities on a scripted map -------------------------------------------------------

def _top_down() -> GroundCalibration:
    # a camera looking straight down: 1 px = 1 cm across, 2 cm down the image; origin at (0, 0)
    return GroundCalibration.from_homography(np.diag([0.01, 0.02, 1.0]), FRAME)


def test_zone_area_and_density_on_a_scripted_map_are_exact() -> None:
    cal = _top_down()
    area = cal.cell_area_m2(SHAPE, CELL)
    assert np.all(area == pytest.approx(0.08 * 0.16, rel=1e-12))
    zone = [(0.25, 0.5), (0.75, 0.5), (0.75, 1.0), (0.25, 1.0)]  # 320 x 240 px = 3.2 m x 4.8 m
    zone_area = cal.polygon_area_m2(zone)
    assert zone_area == pytest.approx(15.36, rel=1e-12)
    dm = np.zeros(SHAPE, np.float32)
    dm[30:60, 20:60] = 0.0256  # 1200 cells of the zone, 2 people per m^2 each
    dens = cal.density_m2(dm, CELL)
    assert dens.dtype == np.float32
    np.testing.assert_allclose(dens[30:60, 20:60], 2.0, rtol=1e-6)
    assert np.all(dens[:30] == 0)
    count = float(dm[30:60, 20:60].sum(dtype=np.float64))
    assert zone_density_m2(count, zone_area) == pytest.approx(2.0, rel=1e-6)
    assert cal.camera_density_m2(dm, CELL) == pytest.approx(count / (0.0128 * 4800), rel=1e-9)
    assert zone_density_m2(5.0, 0.0) is None and zone_density_m2(5.0, None) is None
    assert zone_density_m2(5.0, float("nan")) is None
    # a triangle: half the rectangle
    assert cal.polygon_area_m2([(0.25, 0.5), (0.75, 0.5), (0.75, 1.0)]) == pytest.approx(7.68)


def test_zone_area_equals_its_cells_on_a_tilted_camera() -> None:
    g = ground_to_image_matrix(tilt_deg=25.0, roll_deg=4.0)
    cal = GroundCalibration.from_homography(np.linalg.inv(g), FRAME)
    area = cal.cell_area_m2(SHAPE, CELL)
    # a zone on the cell grid: rows 40..59, cols 10..49 (pixels 320..480 x 80..400)
    zone = [(80 / 640, 320 / 480), (400 / 640, 320 / 480), (400 / 640, 1.0), (80 / 640, 1.0)]
    assert cal.polygon_area_m2(zone) == pytest.approx(area[40:60, 10:50].sum(), rel=1e-9)


def test_partial_last_cells_are_clipped_to_the_frame() -> None:
    cal = GroundCalibration.from_homography(np.diag([0.01, 0.01, 1.0]), (100, 90))
    area = cal.cell_area_m2((13, 12), 8.0)  # ceil(100/8) x ceil(90/8)
    assert area[-1, -1] == pytest.approx(0.04 * 0.02)  # 4 rows x 2 columns of pixels left
    assert area.sum() == pytest.approx(0.9 * 1.0)


def test_cell_areas_are_cached_and_read_only() -> None:
    cal = _top_down()
    a = cal.cell_area_m2(SHAPE, CELL)
    assert cal.cell_area_m2(SHAPE, CELL) is a and not a.flags.writeable


# ---- frame size, config ---------------------------------------------------------------------------

def test_homography_taken_at_another_resolution_is_rescaled() -> None:
    g = ground_to_image_matrix(tilt_deg=30.0)
    h_small = np.linalg.inv(g)  # pixels of a 640x480 image
    big = GroundCalibration.from_homography(h_small @ np.diag([0.5, 0.5, 1.0]), FRAME,
                                            image_size=(1280, 960))
    small = GroundCalibration.from_homography(h_small, FRAME)
    np.testing.assert_allclose(big.cell_area_m2(SHAPE, CELL), small.cell_area_m2(SHAPE, CELL),
                               rtol=1e-9)
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_homography(h_small, FRAME, image_size=(640, 360))
    assert e.value.reason == "image_size_mismatch"


def _cfg(points: np.ndarray | None = None, ground: np.ndarray = GROUND, **kw: object) -> CalibrationConfig:
    pts = [] if points is None else [GroundPointConfig(image=tuple(i), ground=tuple(g))
                                     for i, g in zip(points.tolist(), ground.tolist(), strict=True)]
    return CalibrationConfig(points=pts, **kw)  # type: ignore[arg-type]


def test_from_config_points_homography_and_errors() -> None:
    g = ground_to_image_matrix(tilt_deg=30.0)
    img = _points(g)
    fitted = GroundCalibration.from_config(_cfg(img), FRAME)
    want = analytic_cell_areas(g, SHAPE, CELL, FRAME)
    assert _rel_err(fitted.cell_area_m2(SHAPE, CELL), want).max() < 1e-6
    # the stored homography (as written by the CLI) at another frame size
    stored = _cfg(img, homography=(fitted.homography).tolist(), image_size=(640, 480))
    cal = GroundCalibration.from_config(stored, (960, 1280))
    np.testing.assert_allclose(cal.cell_area_m2(SHAPE, 2 * CELL), want, rtol=1e-6)
    # points edited after the homography was written
    stale = _cfg(img + np.array([[30, 0]] + [[0, 0]] * 7), homography=stored.homography, image_size=(640, 480))
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_config(stale, FRAME, camera="lobby", file="x.yaml")
    assert e.value.reason == "reprojection_error" and "rerun" in str(e.value)
    assert str(e.value).startswith("x.yaml: cameras.lobby.calibration: point 0")
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_config(_cfg(homography=stored.homography), FRAME)
    assert e.value.reason == "image_size_mismatch" and "image_size" in str(e.value)
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_config(CalibrationConfig(), FRAME, camera="lobby")
    assert e.value.reason == "no_calibration" and "cameras.lobby.calibration" in str(e.value)
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_config(_cfg(img, perspective_map="p.npy"), FRAME)
    assert e.value.reason == "ambiguous_calibration"
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_config(_cfg(perspective_map="/nonexistent/p.npy"), FRAME)
    assert e.value.reason == "bad_perspective_map" and "/nonexistent/p.npy" in str(e.value)


def test_image_and_ground_mapping_round_trip() -> None:
    g = ground_to_image_matrix(tilt_deg=15.0)
    cal = GroundCalibration.from_homography(np.linalg.inv(g), FRAME)
    pts = np.array([[1.0, 6.0], [-2.0, 15.0]])
    img = cal.ground_to_image(pts)
    np.testing.assert_allclose(img, project(g, pts), atol=1e-9)
    np.testing.assert_allclose(cal.image_to_ground(img), pts, atol=1e-9)
    assert np.isnan(cal.image_to_ground(np.array([[320.0, 0.0]]))).all()  # sky
    assert np.isnan(cal.ground_to_image(np.array([[0.0, -5.0]]))).all()  # behind the camera


# ---- perspective maps ------------------------------------------------------------------------------

def test_people_scale_map_of_a_known_camera_gives_its_floor_areas() -> None:
    # a Mall-style map built the way such maps are: p = (s_ref / s)^2 from the image scale s of
    # upright people, proportional to 1 / depth; floor area must follow as A_ref * p^1.5
    pose = {"tilt_deg": 35.0, "roll_deg": 3.0}
    depth = pixel_depths(FRAME, **pose)
    ref = (405, 320)
    pmap = (depth / depth[ref]) ** 2
    g = ground_to_image_matrix(**pose)
    a_ref = float(analytic_cell_areas(g, FRAME, 1.0, FRAME)[ref])  # m^2 of the reference pixel
    cal = GroundCalibration.from_perspective_map(pmap, FRAME, units_per_m=1 / np.sqrt(a_ref))
    want = analytic_cell_areas(g, SHAPE, CELL, FRAME)
    assert _rel_err(cal.cell_area_m2(SHAPE, CELL), want).max() < 0.01
    # the isotropic reading of the same map (area = p * A_ref) is off by the foreshortening
    flat = GroundCalibration.from_perspective_map(pmap, FRAME, units_per_m=1 / np.sqrt(a_ref),
                                                  kind="ground_area_weight")
    assert _rel_err(flat.cell_area_m2(SHAPE, CELL), want).max() > 0.2


def test_floor_area_map_from_a_known_camera_gives_its_cell_areas() -> None:
    g = ground_to_image_matrix(tilt_deg=35.0, roll_deg=2.0)
    pixel = analytic_cell_areas(g, FRAME, 1.0, FRAME)  # m^2 of every pixel
    ref = float(pixel[405, 320])
    pmap = (pixel / ref).astype(np.float64)  # floor-area weight, 1 at the reference pixel
    s_ref = 1.0 / np.sqrt(ref)  # sqrt(pixels per m^2) there
    cal = GroundCalibration.from_perspective_map(pmap, FRAME, units_per_m=s_ref,
                                                 kind="ground_area_weight")
    want = analytic_cell_areas(g, SHAPE, CELL, FRAME)
    assert _rel_err(cal.cell_area_m2(SHAPE, CELL), want).max() < 1e-9
    # the same map at half resolution, cells not on map-pixel boundaries: within 1%
    half = pmap.reshape(240, 2, 320, 2).mean(axis=(1, 3))
    cal2 = GroundCalibration.from_perspective_map(half, FRAME, units_per_m=s_ref / 2,
                                                  kind="ground_area_weight")
    want5 = analytic_cell_areas(g, (96, 128), 5.0, FRAME)
    assert _rel_err(cal2.cell_area_m2((96, 128), 5.0), want5).max() < 0.01
    # zone area: the integral over the polygon equals the homography's exact area
    zone = [(0.1, 0.55), (0.8, 0.6), (0.9, 0.95), (0.2, 0.9)]
    exact = GroundCalibration.from_homography(np.linalg.inv(g), FRAME).polygon_area_m2(zone)
    assert cal.polygon_area_m2(zone) == pytest.approx(exact, rel=2e-3)


def test_pixels_per_unit_map_and_excluded_pixels() -> None:
    pmap = np.full((48, 64), 25.0)  # 25 px per unit, 2 units per metre -> 50 px/m
    pmap[:8] = 0.0  # no ground in the top 8 rows
    cal = GroundCalibration.from_perspective_map(pmap, (48, 64), units_per_m=2.0,
                                                 kind="pixels_per_unit")
    area = cal.cell_area_m2((6, 8), 8.0)
    assert np.all(area[0] == 0) and np.allclose(area[1:], 64 / 2500)
    dens = cal.density_m2(np.ones((6, 8)), 8.0)
    assert np.all(dens[0] == 0) and np.allclose(dens[1:], 2500 / 64)
    tri = [(0.0, 0.5), (1.0, 0.5), (0.0, 1.0)]  # 64 x 24 px / 2
    assert cal.polygon_area_m2(tri) == pytest.approx(768 / 2500, rel=1e-3)
    four = np.array([[4.0, -1.0, np.nan]])
    np.testing.assert_allclose(perspective_pixel_area_m2(four, 2.0, "area_weight"), [[2.0, 0, 0]])
    np.testing.assert_allclose(perspective_pixel_area_m2(four, 2.0, "ground_area_weight"),
                               [[1.0, 0, 0]])
    with pytest.raises(CalibrationError) as e:
        GroundCalibration.from_perspective_map(pmap, (480, 480), units_per_m=1.0)
    assert e.value.reason == "image_size_mismatch"


@pytest.mark.data
def test_mall_perspective_map_is_an_area_weight(shared_data: object) -> None:
    from pathlib import Path

    path = Path(str(shared_data)) / "mall" / "perspective_map.npy"
    p = np.load(path).astype(np.float64)
    assert p.shape == (480, 640) and np.allclose(p, p[:, :1])
    # 1/sqrt(p) is linear in the row: p = (s_ref / s)^2 with s the floor's linear image scale
    y = np.arange(480.0)
    inv = 1.0 / np.sqrt(p[:, 0])
    fit = np.polyval(np.polyfit(y, inv, 1), y)
    assert np.abs(fit - inv).max() < 1e-4 * np.ptp(inv)
    cal = GroundCalibration.from_config(
        CalibrationConfig(perspective_map=str(path), perspective_units_per_m=40.0), FRAME)
    area = cal.cell_area_m2(SHAPE, CELL)
    assert np.all(area > 0) and np.all(np.diff(area[:, 0]) < 0)  # far (top) cells are larger
    assert area.sum() == pytest.approx((p ** 1.5).sum() / 40.0 ** 2, rel=1e-9)
    whole = cal.polygon_area_m2([(0, 0), (1, 0), (1, 1), (0, 1)])
    assert whole == pytest.approx(area.sum(), rel=1e-9)
