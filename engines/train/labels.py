"""Block-wise labels for CLIP-EBC training: integer head counts per block, classes, anchors.

The bins themselves (``{0} .. {t-1}, [t, inf)``), the class of a count and the anchors (mean true
count of the training blocks in each bin) come from ``engines.models.bins``, shared with the
model; this module turns head points into the per-block counts they are computed from. A block's
class is the bin holding its count; counts past the last bin's lower bound fall into the open bin
(the label correction that keeps rare dense blocks in range) while the count loss still sees the
true count.

Example::

    counts = block_counts(points, (480, 640), 8)    # (60, 80) int64
    bins = fine_bins(2)                              # [(0, 0), (1, 1), (2, None)]
    anchors = measure_anchors([counts], bins)        # e.g. [0.0, 1.0, 2.01]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from engines.models.bins import Bin, anchors_from_counts, bin_index, fine_bins

__all__ = ["Bin", "bin_index", "block_counts", "fine_bins", "measure_anchors"]


def block_counts(points: np.ndarray, shape: tuple[int, int], block: int) -> np.ndarray:
    """Count the head points in each ``block x block`` cell of an image of ``shape`` (h, w).

    The map covers ``ceil(h/block) x ceil(w/block)`` cells; points outside the image are dropped.
    """
    h, w = shape
    mh, mw = -(-h // block), -(-w // block)
    out = np.zeros((mh, mw), dtype=np.int64)
    if len(points) == 0:
        return out
    pts = np.asarray(points, dtype=np.float64)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    pts = pts[inside]
    cols = np.minimum((pts[:, 0] // block).astype(np.int64), mw - 1)
    rows = np.minimum((pts[:, 1] // block).astype(np.int64), mh - 1)
    np.add.at(out, (rows, cols), 1)
    return out


def measure_anchors(count_maps: Iterable[np.ndarray], bins: Sequence[Bin]) -> list[float]:
    """Anchors from the block counts of a whole training set (mean true count per bin)."""
    flat = np.concatenate([np.asarray(c).ravel() for c in count_maps])
    return anchors_from_counts(flat, bins)
