"""Helpers shared by the outputs tests (engineer D): a real embedded server, synthetic results."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engines.density import DensityMap
from pipeline.redis_embedded import EmbeddedRedis
from pipeline.results import FrameResult


def start_server(tmp: Path) -> EmbeddedRedis:
    srv = EmbeddedRedis(tmp / "redis")
    srv.start()
    return srv


def make_result(camera: str = "cam", i: int = 0, count: float | None = None,
                shape: tuple[int, int] = (36, 64), cell: int = 8,
                frame: np.ndarray | None = None, ts: float | None = None) -> FrameResult:
    """A FrameResult whose density map sums to ``count`` (default: a value varying with i); the
    smoothed and the raw map share one array, as with ``smoothing.method: none``."""
    rng = np.random.default_rng(i)
    dens = rng.random(shape, dtype=np.float32)
    target = float(10 + (i % 7)) if count is None else count
    dens *= np.float32(target / max(float(dens.sum()), 1e-9))
    h, w = int(shape[0] * cell), int(shape[1] * cell)
    now = time.time() if ts is None else ts
    dm = DensityMap(dens, cell)
    return FrameResult(camera=camera, frame_index=i, pts=i / 30.0, capture_ts=now,
                       count=target, raw_count=target + 0.5, density=dm, raw_density=dm,
                       frame_size=(h, w), engine_id="test-engine", result_ts=now, frame=frame)
