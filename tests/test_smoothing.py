"""Count filters and the heatmap EMA on synthetic signals with known behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SmoothingConfig
from pipeline.smoothing import EmaFilter, HeatmapEma, KalmanFilter, OneEuroFilter, Smoother


def _noisy(n: int = 400, level: float = 50.0, sd: float = 4.0, seed: int = 0) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0, sd, n)


@pytest.mark.parametrize("cfg", [
    SmoothingConfig(method="ema", alpha=0.2),
    SmoothingConfig(method="kalman", process_noise=1.0, measurement_noise=16.0),
    SmoothingConfig(method="one_euro", min_cutoff_hz=0.3, beta=0.0),
])
def test_filters_reduce_noise_on_a_steady_count(cfg: SmoothingConfig) -> None:
    raw = _noisy()
    sm = Smoother(cfg)
    out = np.array([sm.update(x, np.zeros((2, 2), np.float32), t=i / 25)[0]
                    for i, x in enumerate(raw)])
    assert np.std(out[100:]) < 0.5 * np.std(raw[100:])
    assert abs(out[100:].mean() - 50.0) < 1.0


def test_ema_exact_values() -> None:
    f = EmaFilter(0.5)
    assert [f.update(x) for x in (10.0, 20.0, 20.0)] == [10.0, 15.0, 17.5]


def test_kalman_follows_a_step() -> None:
    f = KalmanFilter(process_noise=25.0, measurement_noise=4.0)
    vals = [f.update(10.0 if i < 50 else 30.0, i / 10) for i in range(100)]
    assert abs(vals[49] - 10.0) < 1e-6 and abs(vals[-1] - 30.0) < 0.5


def test_one_euro_beta_speeds_up_tracking() -> None:
    slow, fast = OneEuroFilter(0.2, 0.0), OneEuroFilter(0.2, 1.0)
    ramp = [float(i) for i in range(50)]
    s = [slow.update(x, i / 25) for i, x in enumerate(ramp)]
    f = [fast.update(x, i / 25) for i, x in enumerate(ramp)]
    assert abs(f[-1] - 49) < abs(s[-1] - 49)


def test_heatmap_ema_decays_and_restarts_on_shape_change() -> None:
    h = HeatmapEma(0.5)
    a = h.update(np.ones((3, 4), np.float32))
    b = h.update(np.zeros((3, 4), np.float32))
    assert np.allclose(a, 1.0) and np.allclose(b, 0.5)
    assert b is not h.value  # callers get a copy, the state is not aliased
    c = h.update(np.full((2, 2), 7.0, np.float32))
    assert np.allclose(c, 7.0)


def test_method_none_keeps_raw() -> None:
    sm = Smoother(SmoothingConfig(method="none"))
    d = np.random.rand(4, 4).astype(np.float32)
    c, d2 = sm.update(3.5, d, None)
    assert c == 3.5 and d2 is d
