"""Zone masks and counts on the density grid, and people/m^2 with a real ground calibration."""

from __future__ import annotations

import numpy as np
import pytest
from _outputs_helpers import make_result

from pipeline.config import config_from_dict
from pipeline.zones import ZoneSink, polygon_mask

SHAPE, FRAME, CELL = (36, 64), (288, 512), 8.0


def test_masks_partition_the_frame_exactly() -> None:
    full = polygon_mask([(0, 0), (1, 0), (1, 1), (0, 1)], SHAPE, FRAME, CELL)
    assert full.min() == 1.0 and full.max() == 1.0
    left = polygon_mask([(0, 0), (0.33, 0), (0.61, 1), (0, 1)], SHAPE, FRAME, CELL)
    right = polygon_mask([(0.33, 0), (1, 0), (1, 1), (0.61, 1)], SHAPE, FRAME, CELL)
    np.testing.assert_array_equal(left + right, full)  # shared edges counted once
    # coverage is fractional at the slanted edge and matches the trapezoid's area
    assert ((left[10] > 0) & (left[10] < 1)).any()
    assert left.sum() == pytest.approx((0.33 + 0.61) / 2 * SHAPE[0] * SHAPE[1], rel=1e-3)
    tri = polygon_mask([(0.1, 0.1), (0.9, 0.1), (0.5, 0.9)], SHAPE, FRAME, CELL)
    assert tri.sum() == pytest.approx(0.5 * 0.8 * 0.8 * SHAPE[0] * SHAPE[1], rel=0.01)


def test_zone_counts_are_mask_weighted_sums() -> None:
    cfg = config_from_dict({"cameras": {"c": {"url": "x.mp4", "zones": [
        {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]},
        {"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]},
        {"name": "box", "polygon": [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]},
    ]}}})
    sink = ZoneSink(cfg.cameras)
    r = make_result("c", 3, count=40.0)
    r.density.map[:] = 0
    r.density.map[:, :32] = 1.0 / (36 * 32) * 30  # 30 people on the left half
    r.density.map[:, 32:] = 1.0 / (36 * 32) * 10  # 10 on the right
    sink.write(r)
    assert r.zone_counts["left"] == pytest.approx(30.0)
    assert r.zone_counts["right"] == pytest.approx(10.0)
    assert r.zone_counts["box"] == pytest.approx(15.0 / 2 + 5.0 / 2)  # a quarter of the frame
    assert r.zone_density["left"] == pytest.approx(30.0 / (36 * 32))
    assert r.zone_density_m2 == {} and r.density_m2 is None  # not calibrated
    other = make_result("uncounted-camera", 0)
    sink.write(other)
    assert other.zone_counts == {}


def test_zone_density_per_m2_with_ground_calibration() -> None:
    # a top-down camera: 100 px = 1 m on a 512x288 frame, so the frame covers 5.12 m x 2.88 m
    h = [[0.01, 0, 0], [0, 0.01, 0], [0, 0, 1]]
    cfg = config_from_dict({"cameras": {"c": {
        "url": "x.mp4", "calibration": {"homography": h, "image_size": [512, 288]},
        "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}]}}})
    sink = ZoneSink(cfg.cameras)
    r = make_result("c", 0)
    r.density.map[:] = 0
    r.density.map[:, :32] = 20.0 / (36 * 32)
    sink.write(r)
    area_left = 2.56 * 2.88
    assert r.zone_counts["left"] == pytest.approx(20.0)
    assert r.zone_density_m2["left"] == pytest.approx(20.0 / area_left, rel=1e-6)
    assert r.density_m2 == pytest.approx(20.0 / (5.12 * 2.88), rel=1e-6)
