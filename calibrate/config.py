"""Ground-calibration settings of one camera (the ``calibration:`` section of a run config).

Kept in ``calibrate`` (which may not import ``pipeline``) so the geometry code and the run config
share one definition.

Example::

    cal = CalibrationConfig(points=[GroundPointConfig((102, 410), (0, 0)), ...])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engines.yamlconfig import path_field


@dataclass
class GroundPointConfig:
    """One calibration point: a pixel and where it lies on the ground plane (metres)."""

    image: tuple[float, float]
    ground: tuple[float, float]


@dataclass
class CalibrationConfig:
    """Ground-plane calibration of a camera (``crowdstream calibrate ground``).

    Either ``points`` (>= 4 image/ground pairs; ``homography`` + ``image_size`` are written from
    them by the calibrate command) or a ``perspective_map``. Image coordinates are pixels of an
    ``image_size`` frame, (0, 0) the top-left corner; ground coordinates are metres.
    """

    points: list[GroundPointConfig] = field(default_factory=list)
    homography: list[list[float]] | None = None  # image -> ground (3x3), written by calibrate
    image_size: tuple[int, int] | None = None  # (width, height) the points / homography refer to
    perspective_map: str | None = path_field(None)  # per-pixel scale map (.npy), alternative input
    # What the map's value p means (u = perspective_units_per_m; see calibrate/ground.py):
    # "area_weight" (Mall / UCSD): p = (s_ref / s)^2, s = image scale of upright people; floor area
    #   of a pixel = p^1.5 / u^2, u = sqrt(pixels covered by 1 m^2 of floor) where p == 1.
    # "ground_area_weight": p proportional to a pixel's floor area; floor area = p / u^2.
    # "pixels_per_unit": p = image pixels per unit of floor length (isotropic), u = units per metre;
    #   floor area = 1 / (p * u)^2.
    perspective_kind: Literal["area_weight", "ground_area_weight", "pixels_per_unit"] = "area_weight"
    perspective_units_per_m: float = 1.0
    max_reprojection_error_m: float = 0.25
    # homography: density cells whose floor is seen coarser than this (metres per pixel along the
    # image rows, the scale people appear at) are outside the usable ground region: area 0, no
    # p/m² (the far field under a horizon: people too small to count). None: only the horizon cuts.
    max_metres_per_pixel: float | None = 0.1

    def __post_init__(self) -> None:
        if self.max_metres_per_pixel is not None and self.max_metres_per_pixel <= 0:
            raise ValueError("max_metres_per_pixel must be > 0 (or null for no limit)")
        if self.perspective_units_per_m <= 0:
            raise ValueError("perspective_units_per_m must be > 0")
        if self.max_reprojection_error_m <= 0:
            raise ValueError("max_reprojection_error_m must be > 0")
        if self.homography is not None and (
                len(self.homography) != 3 or any(len(r) != 3 for r in self.homography)):
            raise ValueError("homography must be a 3x3 list of lists")
        if self.image_size is not None and min(self.image_size) <= 0:
            raise ValueError(f"image_size must be (width, height) > 0, got {self.image_size}")
