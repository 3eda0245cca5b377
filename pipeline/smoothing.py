"""Temporal smoothing of counts (EMA, Kalman, one-euro) and heatmaps (decaying EMA).

Raw values are never overwritten: the post stage keeps ``raw_count`` / ``raw_density`` next to
the smoothed ones. Filters take the frame's timestamp (source PTS when known, else capture time)
so sampled or irregular frame rates smooth by time, not by frame count.

Example::

    sm = Smoother(SmoothingConfig(method="kalman"))
    count, density = sm.update(raw_count, raw_density, t=meta.pts)
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.config import SmoothingConfig

__all__ = ["EmaFilter", "HeatmapEma", "KalmanFilter", "OneEuroFilter", "Smoother", "make_filter"]


class EmaFilter:
    """Exponential moving average: ``s = alpha * x + (1 - alpha) * s``."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value: float | None = None

    def update(self, x: float, t: float | None = None) -> float:
        self.value = x if self.value is None else self.alpha * x + (1 - self.alpha) * self.value
        return self.value


class KalmanFilter:
    """1-D Kalman filter with a random-walk model of the count.

    ``process_noise`` is the variance the true count gains per second, ``measurement_noise`` the
    variance of one raw count; the gain adapts to the time between frames.
    """

    def __init__(self, process_noise: float, measurement_noise: float) -> None:
        if process_noise < 0 or measurement_noise <= 0:
            raise ValueError("need process_noise >= 0 and measurement_noise > 0")
        self.q = process_noise
        self.r = measurement_noise
        self.value: float | None = None
        self.var = 0.0
        self._t: float | None = None

    def update(self, x: float, t: float | None = None) -> float:
        if self.value is None:
            self.value, self.var, self._t = x, self.r, t
            return x
        dt = _dt(self._t, t)
        self._t = t
        var = self.var + self.q * dt
        gain = var / (var + self.r)
        self.value += gain * (x - self.value)
        self.var = (1.0 - gain) * var
        return self.value


class OneEuroFilter:
    """One-euro filter (Casiez et al. 2012): steady when the count is steady, quick when it moves.

    The cutoff rises with the (smoothed) rate of change: ``min_cutoff_hz + beta * |dx/dt|``.
    """

    def __init__(self, min_cutoff_hz: float, beta: float, d_cutoff_hz: float = 1.0) -> None:
        if min_cutoff_hz <= 0 or beta < 0:
            raise ValueError("need min_cutoff_hz > 0 and beta >= 0")
        self.min_cutoff = min_cutoff_hz
        self.beta = beta
        self.d_cutoff = d_cutoff_hz
        self.value: float | None = None
        self._dx = 0.0
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def update(self, x: float, t: float | None = None) -> float:
        if self.value is None:
            self.value, self._t = x, t
            return x
        dt = _dt(self._t, t)
        self._t = t
        dx = (x - self.value) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        a = self._alpha(self.min_cutoff + self.beta * abs(self._dx), dt)
        self.value = a * x + (1 - a) * self.value
        return self.value


class _Identity:
    def update(self, x: float, t: float | None = None) -> float:
        return x


def _dt(t0: float | None, t1: float | None, default: float = 1 / 25) -> float:
    """Seconds between two frames; a missing or non-increasing clock falls back to 25 fps."""
    if t0 is None or t1 is None or not t1 > t0:
        return default
    return t1 - t0


CountFilter = EmaFilter | KalmanFilter | OneEuroFilter | _Identity


def make_filter(cfg: SmoothingConfig) -> CountFilter:
    """The count filter ``cfg.method`` names."""
    if cfg.method == "ema":
        return EmaFilter(cfg.alpha)
    if cfg.method == "kalman":
        return KalmanFilter(cfg.process_noise, cfg.measurement_noise)
    if cfg.method == "one_euro":
        return OneEuroFilter(cfg.min_cutoff_hz, cfg.beta)
    if cfg.method == "none":
        return _Identity()
    raise ValueError(f"unknown smoothing method {cfg.method!r}")


class HeatmapEma:
    """Decaying EMA of density maps; restarts when the map shape changes (new frame size)."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"heatmap_alpha must be in (0, 1], got {alpha}")
        self.alpha = np.float32(alpha)
        self.value: np.ndarray | None = None

    def update(self, m: np.ndarray) -> np.ndarray:
        if self.value is None or self.value.shape != m.shape:
            self.value = m.astype(np.float32, copy=True)
        else:
            # in place: s = s + alpha * (m - s), no per-frame allocation of a new map
            self.value += self.alpha * (m - self.value)
        return self.value.copy()


class Smoother:
    """One camera's count filter plus heatmap EMA (``method: none`` leaves both raw)."""

    def __init__(self, cfg: SmoothingConfig) -> None:
        self.cfg = cfg
        self.count_filter = make_filter(cfg)
        self.heatmap = HeatmapEma(cfg.heatmap_alpha) if cfg.method != "none" else None

    def update(self, count: float, density: np.ndarray,
               t: float | None) -> tuple[float, np.ndarray]:
        """Smoothed ``(count, density)`` for a frame taken at ``t`` seconds."""
        c = float(self.count_filter.update(float(count), t))
        d = self.heatmap.update(density) if self.heatmap is not None else density
        return c, d
