"""Ground-calibration settings of one camera (the ``calibration:`` section of a run config).

Kept in ``calibrate`` (which may not import ``pipeline``) so the geometry code and the run config
share one definition. A section on its own may be incomplete (``crowdstream calibrate ground``
starts from an empty one) so only its values are checked when it is built;
:meth:`CalibrationConfig.problem` says why it cannot calibrate a camera, and the run config refuses
a camera whose calibration has a problem.

Example::

    cal = CalibrationConfig(points=[GroundPointConfig(image=(102, 410), ground=(0, 0)), ...])
    assert cal.problem() is None
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from engines.yamlconfig import ConfigModel, FloatPair, Items, Pair, PathStr


class GroundPointConfig(ConfigModel):
    """One calibration point: a pixel and where it lies on the ground plane (metres)."""

    image: FloatPair = Field(description="Pixel [x, y] in an image_size frame, (0, 0) the "
                                         "top-left corner.")
    ground: FloatPair = Field(description="Where that pixel lies on the ground plane, [x, y] "
                                          "in metres.")


class CalibrationConfig(ConfigModel):
    """Ground-plane calibration of a camera (``crowdstream calibrate ground``).

    Either ``points`` (>= 4 image/ground pairs; ``homography`` + ``image_size`` are written from
    them by the calibrate command) or a ``perspective_map``. Image coordinates are pixels of an
    ``image_size`` frame, (0, 0) the top-left corner; ground coordinates are metres.
    """

    points: Items[GroundPointConfig] = Field(
        (), description="Image/ground point pairs (at least 4, no 3 on a line) the homography is "
                        "fitted to.")
    homography: Items[Items[float]] | None = Field(
        None, description="Image -> ground 3x3 matrix, written by 'crowdstream calibrate ground'; "
                          "needs image_size.")
    image_size: Pair[PositiveInt] | None = Field(
        None, description="[width, height] of the image the points and homography refer to.")
    perspective_map: PathStr | None = Field(
        None, description="Per-pixel scale map (.npy), the alternative to points/homography; "
                          "relative to the config's folder.")
    # What the map's value p means (u = perspective_units_per_m; see calibrate/ground.py):
    # "area_weight" (Mall / UCSD): p = (s_ref / s)^2, s = image scale of upright people; floor area
    #   of a pixel = p^1.5 / u^2, u = sqrt(pixels covered by 1 m^2 of floor) where p == 1.
    # "ground_area_weight": p proportional to a pixel's floor area; floor area = p / u^2.
    # "pixels_per_unit": p = image pixels per unit of floor length (isotropic), u = units per metre;
    #   floor area = 1 / (p * u)^2.
    perspective_kind: Literal["area_weight", "ground_area_weight", "pixels_per_unit"] = Field(
        "area_weight", description="What a perspective_map value p means: area_weight "
        "(Mall/UCSD, (s_ref/s)^2), ground_area_weight (proportional to a pixel's floor area) or "
        "pixels_per_unit (image pixels per unit of floor length).")
    perspective_units_per_m: float = Field(
        1.0, gt=0, description="Map units per metre (area_weight: sqrt of the pixels 1 m^2 of "
                               "floor covers where p == 1).")
    max_reprojection_error_m: float = Field(
        0.25, gt=0, description="Refuse a fit whose worst point is further than this from its "
                                "ground position (metres).")
    # homography: density cells whose floor is seen coarser than this (metres per pixel along the
    # image rows, the scale people appear at) are outside the usable ground region: area 0, no
    # p/m² (the far field under a horizon: people too small to count). None: only the horizon cuts.
    max_metres_per_pixel: float | None = Field(
        0.1, gt=0, description="Cells seen coarser than this (metres per pixel) are outside the "
                               "usable ground (no p/m^2); null: only the horizon cuts.")

    @field_validator("homography")
    @classmethod
    def _three_by_three(cls, h: tuple[tuple[float, ...], ...] | None
                        ) -> tuple[tuple[float, ...], ...] | None:
        if h is not None:
            if len(h) != 3 or any(len(r) != 3 for r in h):
                raise ValueError(f"expected a 3x3 list of lists, got {len(h)} rows of "
                                 f"{[len(r) for r in h]} values")
            if not all(math.isfinite(v) for r in h for v in r):
                raise ValueError("contains NaN or infinity")
        return h

    def problem(self) -> tuple[str, str] | None:
        """Why this section cannot calibrate a camera: (key below ``calibration``, reason), or
        None. One input (points/homography or a perspective map, not both); a homography with
        the image_size it refers to; else points that make a usable set
        (``calibrate.ground.check_point_set``: >= 4, distinct, no 3 on a line, on the image).
        What needs the frames (their size, the fit's error) is checked at run time."""
        if self.perspective_map and (self.points or self.homography is not None):
            return "perspective_map", "give either points/homography or perspective_map, not both"
        if self.homography is not None and self.image_size is None:
            return "image_size", ("required with homography: it says which pixels the "
                                  "homography maps ([width, height])")
        if self.homography is not None or self.perspective_map:
            return None
        if not self.points:
            return "points", ("needs points (>= 4 image/ground pairs), a homography or a "
                              "perspective_map; see 'crowdstream calibrate ground'")
        import numpy as np

        from calibrate.ground import CalibrationError, check_point_set

        img = np.array([p.image for p in self.points], np.float64)
        gnd = np.array([p.ground for p in self.points], np.float64)
        try:
            check_point_set(img, gnd, self.image_size)
        except CalibrationError as e:
            return "points", e.message
        return None
