"""The one result type every counting path returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DensityMap:
    """A per-cell count map for one image.

    ``map[i, j]`` is the number of objects in the cell that covers image pixels
    ``[i*cell, (i+1)*cell) x [j*cell, (j+1)*cell)`` where ``cell = block_size / scale``;
    ``count`` is ``map.sum()``.

    Example::

        dm = predict(model, frame)
        print(dm.count, dm.map.shape, dm.cell_pixels)
    """

    map: np.ndarray
    block_size: int
    scale: float = 1.0

    @property
    def count(self) -> float:
        return float(self.map.sum(dtype=np.float64))

    @property
    def cell_pixels(self) -> float:
        """Side of one map cell in pixels of the original (un-resized) image."""
        return self.block_size / self.scale
