"""The one inference interface every backend implements.

An :class:`Engine` takes a batch of float32 RGB tiles in [0, 1] shaped ``(n, 3, H, W)`` with
``n <= max_batch`` and ``(H, W) == window``, and returns float32 counts per cell shaped
``(n, 1, H / block_size, W / block_size)`` (the sum of a tile's map is its count). Text features
(CLIP prompts) are constants inside the engine: one engine per prompt.

Example::

    engine = load_engine(None, backend="onnx", random_init="ebc-tiny-rn")
    engine.warmup()
    maps = engine.run(np.zeros((4, 3, *engine.window), np.float32))
    print(engine.description["backend"], maps.shape)
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class EngineError(RuntimeError):
    """An engine cannot be built, loaded or run; the message says what to do about it."""


class Engine(abc.ABC):
    """A fixed-window, bounded-batch density model behind one ``run`` call.

    Subclasses set ``window``, ``block_size``, ``max_batch``, ``engine_id`` and ``description``
    in their constructor and implement :meth:`_run`.
    """

    window: tuple[int, int]
    block_size: int
    max_batch: int
    engine_id: str
    description: dict[str, Any]

    @property
    def out_shape(self) -> tuple[int, int]:
        """(h, w) of one tile's output map."""
        return (self.window[0] // self.block_size, self.window[1] // self.block_size)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run ``batch`` (n, 3, H, W) float32 -> (n, 1, H/b, W/b) float32 counts per cell."""
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != tuple(self.window):
            raise ValueError(
                f"engine {self.engine_id} expects tiles (n, 3, {self.window[0]}, {self.window[1]}), "
                f"got {tuple(batch.shape)}")
        n = batch.shape[0]
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"engine {self.engine_id} takes 1..{self.max_batch} tiles, got {n}")
        if batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        out = self._run(np.ascontiguousarray(batch))
        return out.reshape(n, 1, *self.out_shape)

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Backend inference on a validated contiguous float32 batch."""

    def warmup(self, iterations: int = 2) -> None:
        """Run a few full batches so lazy allocations and kernel choices happen now, not on frame 1."""
        x = np.full((self.max_batch, 3, *self.window), 0.5, dtype=np.float32)
        for _ in range(iterations):
            self.run(x)

    def close(self) -> None:
        """Release backend resources (sessions, CUDA graphs). Safe to call twice."""
        return None

    def __repr__(self) -> str:
        d = getattr(self, "description", {})
        return (f"<{type(self).__name__} {getattr(self, 'engine_id', '?')} "
                f"backend={d.get('backend')} precision={d.get('precision')} "
                f"device={d.get('device')} window={getattr(self, 'window', None)}>")


def make_description(
    *,
    backend: str,
    precision: str,
    device: str,
    window: tuple[int, int],
    block_size: int,
    max_batch: int,
    checkpoint_hash: str | None,
    source: str | None,
    spec: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``description`` dict every engine carries (logged by the pipeline, shown by bench).
    ``spec`` (a ``ModelSpec`` or its dict) gives ``resize``: the model's resize rule, which the
    pipeline applies to frames before tiling exactly as ``engines.predict`` does."""
    if isinstance(spec, dict):
        resize = {k: spec.get(k) for k in ("resize_height", "min_side", "max_side")}
    else:
        resize = {k: getattr(spec, k, None) for k in ("resize_height", "min_side", "max_side")}
    return {
        "resize": resize,
        "backend": backend,
        "precision": precision,
        "device": device,
        "window": [int(window[0]), int(window[1])],
        "block_size": int(block_size),
        "batch": {"min": 1, "max": int(max_batch)},
        "checkpoint_hash": checkpoint_hash,
        "source": source,
        **extra,
    }
