"""A known pinhole camera over a flat floor, shared by the ground-calibration tests.

World: floor Z = 0, X right, Y away from the camera, metres. The camera stands at ``height`` metres
over the origin, turned ``yaw_deg`` about the vertical, looking ``tilt_deg`` below the horizontal,
rolled ``roll_deg`` about its optical axis; image x right, y down.
"""

from __future__ import annotations

import numpy as np


def camera_pose(f: float = 600.0, cx: float = 320.0, cy: float = 240.0, height: float = 5.0,
                tilt_deg: float = 30.0, yaw_deg: float = 0.0,
                roll_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, R, centre): intrinsics, world -> camera rotation, camera position (metres)."""
    t, a = np.radians(tilt_deg), np.radians(yaw_deg)
    c, s = np.cos(t), np.sin(t)
    # rows: camera x (world X), camera y (image down), camera z (optical axis), before the yaw
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, -s, -c], [0.0, c, -s]])
    yaw = np.array([[np.cos(a), np.sin(a), 0.0], [-np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    q = np.radians(roll_deg)  # about the optical axis: tilts the horizon in the image
    roll = np.array([[np.cos(q), -np.sin(q), 0.0], [np.sin(q), np.cos(q), 0.0], [0.0, 0.0, 1.0]])
    r = roll @ tilt @ yaw
    centre = np.array([0.0, 0.0, height])
    k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    return k, r, centre


def ground_to_image_matrix(**pose: float) -> np.ndarray:
    """3x3 G with image ~ G @ (X, Y, 1): K [r1 r2 t] of the camera of :func:`camera_pose`."""
    k, r, centre = camera_pose(**pose)
    return k @ np.column_stack([r[:, 0], r[:, 1], -r @ centre])


def pixel_depths(frame: tuple[int, int], **pose: float) -> np.ndarray:
    """Depth along the optical axis (metres) of the floor point under each pixel centre, by
    intersecting the pixel's ray with the floor (NaN where the ray misses it)."""
    k, r, centre = camera_pose(**pose)
    ys, xs = np.mgrid[0 : frame[0], 0 : frame[1]] + 0.5
    rays_cam = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.linalg.inv(k).T  # z = 1
    rays = rays_cam @ r  # world directions (camera -> world is R^T)
    lam = -centre[2] / rays[..., 2]  # reach Z = 0
    return np.where(lam > 0, lam, np.nan)  # camera-z of the ray is 1, so depth = lambda


def project(g: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """Ground points (n, 2) in metres -> image pixels (n, 2) through ``g``."""
    x = np.column_stack([ground, np.ones(len(ground))]) @ g.T
    return x[:, :2] / x[:, 2:]


def analytic_cell_areas(g: np.ndarray, shape: tuple[int, int], cell: float,
                        frame: tuple[int, int]) -> np.ndarray:
    """Ground area of each cell in closed form, independently of the shoelace code under test.

    For image -> ground H = G^-1 with third row (a, b, c), the area element is
    |det H| / w^3, w = a x + b y + c, and over a rectangle
    int int w^-3 dx dy = F(x1, y1) - F(x0, y1) - F(x1, y0) + F(x0, y0), F = 1 / (2 a b w).
    Cells that reach the horizon (w changes sign or is 0 on them) get 0.
    """
    h = np.linalg.inv(g)
    h = h / np.sign(h[2] @ [frame[1] / 2, frame[0], 1.0])  # w > 0 on the floor side
    a, b, c = h[2]
    det = abs(np.linalg.det(h))
    fh, fw = frame
    ys = np.minimum(np.arange(shape[0] + 1) * cell, fh)
    xs = np.minimum(np.arange(shape[1] + 1) * cell, fw)
    x, y = np.meshgrid(xs, ys)
    w = a * x + b * y + c
    ok = (w[:-1, :-1] > 0) & (w[:-1, 1:] > 0) & (w[1:, :-1] > 0) & (w[1:, 1:] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if abs(a) > 1e-12 * abs(b):
            f = 1.0 / (2.0 * a * b * w)
            integral = f[1:, 1:] - f[:-1, 1:] - f[1:, :-1] + f[:-1, :-1]
        else:  # no x dependence: (x1 - x0) * [-1 / (2 b w^2)] over y
            gy = -1.0 / (2.0 * b * w[:, :1] ** 2)
            integral = (gy[1:] - gy[:-1]) * np.diff(xs)[None, :]
    return np.where(ok, det * np.abs(integral), 0.0)


def test_camera_helper_geometry() -> None:
    # the floor point straight ahead at distance d is seen at row cy + f*tan(atan(h/d) - tilt)
    g = ground_to_image_matrix(f=600.0, height=5.0, tilt_deg=30.0)
    for d in (3.0, 8.66, 20.0):
        (x, y), = project(g, np.array([[0.0, d]]))
        expect = 240.0 + 600.0 * np.tan(np.arctan(5.0 / d) - np.radians(30.0))
        assert abs(x - 320.0) < 1e-9 and abs(y - expect) < 1e-9


def test_analytic_areas_sum_to_the_floor_seen() -> None:
    # the whole frame of a camera looking down (no horizon in view) covers the quadrilateral of
    # its four back-projected corners; the cell areas must add up to that
    g = ground_to_image_matrix(tilt_deg=50.0, yaw_deg=10.0, roll_deg=8.0)
    areas = analytic_cell_areas(g, (60, 80), 8.0, (480, 640))
    corners = np.array([[0, 0], [640, 0], [640, 480], [0, 480]], float)
    q = np.column_stack([corners, np.ones(4)]) @ np.linalg.inv(g).T
    q = q[:, :2] / q[:, 2:]
    x, yv = q[:, 0], q[:, 1]
    quad = 0.5 * abs(np.dot(x, np.roll(yv, -1)) - np.dot(yv, np.roll(x, -1)))
    assert np.all(areas > 0)
    assert abs(areas.sum() - quad) / quad < 1e-9
