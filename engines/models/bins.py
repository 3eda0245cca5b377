"""Count bins, anchors and the text prompts generated from them (CLIP-EBC).

A bin is an inclusive count range ``(lo, hi)`` of one ``block x block`` cell; ``hi=None`` is
+infinity. The anchor of a bin is the count the model predicts for it: the mean count of the
training blocks that fall in it (the official "average" anchors), so the expectation over bins is
an unbiased count. The official block-8 tables (``configs/reduction_8.json`` of CLIP-EBC) are
kept here; :func:`anchors_from_counts` measures anchors for a new data set.

Example::

    bins, anchors = official_bins("sha", truncation=4)
    make_prompts(bins, "word")[0]   # "There is no person."
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

Bin = tuple[float, float | None]

# Mean count of the blocks in the open last bin, official block-8 "average" anchors
# (truncation -> data set -> last anchor); the other anchors equal their bin's value.
_LAST_ANCHOR: dict[int, dict[str, float]] = {
    2: {"sha": 2.24479, "shb": 2.15171, "nwpu": 2.10737, "qnrf": 2.09296, "jhu": 2.18589},
    4: {"sha": 4.29992, "shb": 4.41009, "nwpu": 4.21931, "qnrf": 4.21937, "jhu": 4.24058},
    11: {"qnrf": 11.0},
}

_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def fine_bins(truncation: int) -> list[Bin]:
    """``{0}, {1}, ..., {t-1}, [t, inf)``: the official "fine" granularity."""
    if truncation < 1:
        raise ValueError(f"truncation must be >= 1, got {truncation}")
    return [(float(i), float(i)) for i in range(truncation)] + [(float(truncation), None)]


def official_bins(dataset: str, truncation: int = 4) -> tuple[list[Bin], list[float]]:
    """The official CLIP-EBC block-8 bins and average anchors for ``dataset``.

    ``dataset`` is one of ``sha``, ``shb``, ``nwpu``, ``qnrf``, ``jhu``; ``truncation`` 2 or 4
    (11 exists for ``qnrf`` only).
    """
    table = _LAST_ANCHOR.get(truncation)
    if table is None:
        raise ValueError(f"no official block-8 table for truncation {truncation}; "
                         f"known: {sorted(_LAST_ANCHOR)}")
    key = dataset.lower()
    if key not in table:
        raise ValueError(f"no official anchors for dataset {dataset!r} at truncation {truncation}; "
                         f"known: {sorted(table)}")
    bins = fine_bins(truncation)
    anchors = [float(i) for i in range(truncation)] + [table[key]]
    return bins, anchors


def number_word(n: int) -> str:
    """English words for 0 <= n < 1000 (``21`` -> ``"twenty-one"``)."""
    if n < 0 or n >= 1000:
        return str(n)
    if n < 20:
        return _WORDS[n]
    if n < 100:
        tens, rest = divmod(n, 10)
        return _TENS[tens] + (f"-{_WORDS[rest]}" if rest else "")
    hundreds, rest = divmod(n, 100)
    return f"{_WORDS[hundreds]} hundred" + (f" and {number_word(rest)}" if rest else "")


def _fmt(n: float, style: str) -> str:
    i = int(n)
    if i != n:
        return f"{n:g}"
    if style == "number":
        return str(i)
    return "no" if i == 0 else number_word(i)


def make_prompt(bin_: Bin | Sequence[Any], style: str = "word") -> str:
    """The text prompt of one bin, e.g. ``(2, 2)`` -> ``"There are two people."``.

    Single values: ``"There is no person."`` / ``"There is one person."`` / ``"There are N
    people."``; open bins: ``"There are more than N people."``; closed ranges: ``"There are
    between A and B people."``. ``style="number"`` writes digits (``"There is 0 person."``).
    """
    if style not in ("word", "number"):
        raise ValueError(f"prompt style must be 'word' or 'number', got {style!r}")
    lo, hi = bin_
    if hi is None:
        return f"There are more than {_fmt(lo, style)} people."
    if lo == hi:
        if lo <= 1:
            return f"There is {_fmt(lo, style)} person."
        return f"There are {_fmt(lo, style)} people."
    return f"There are between {_fmt(lo, style)} and {_fmt(hi, style)} people."


def make_prompts(bins: Sequence[Bin] | Sequence[Sequence[Any]], style: str = "word") -> list[str]:
    """One prompt per bin, in bin order."""
    return [make_prompt(b, style) for b in bins]


def _lower_bounds(bins: Sequence[Bin]) -> np.ndarray:
    lows = np.asarray([float(lo) for lo, _ in bins], dtype=np.float64)
    if np.any(np.diff(lows) <= 0):
        raise ValueError(f"bins must be sorted and disjoint, got {list(bins)}")
    return lows


def bin_index(counts: np.ndarray, bins: Sequence[Bin]) -> np.ndarray:
    """The bin of each block count: the last bin whose lower bound is <= the count.

    Counts between two integer bins (e.g. 1.5 with bins {1},{2}) fall in the lower one; counts
    below the first bound go to bin 0.
    """
    lows = _lower_bounds(bins)
    idx = np.searchsorted(lows, np.asarray(counts, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, len(lows) - 1)


def bin_labels(counts: torch.Tensor, bins: Sequence[Bin]) -> torch.Tensor:
    """Torch version of :func:`bin_index` (int64 class labels, same device), for training."""
    import torch

    lows = torch.as_tensor(_lower_bounds(bins), dtype=counts.dtype, device=counts.device)
    idx = torch.bucketize(counts, lows, right=True) - 1
    return idx.clamp_(0, len(lows) - 1)


def anchors_from_counts(counts: np.ndarray, bins: Sequence[Bin]) -> list[float]:
    """Mean block count per bin over ``counts`` (any shape); empty bins keep their lower bound.

    This is how the official anchors were made: ``counts`` = the count of every ``block x block``
    cell of every training image.
    """
    flat = np.asarray(counts, dtype=np.float64).ravel()
    idx = bin_index(flat, bins)
    anchors: list[float] = []
    for k, (lo, _) in enumerate(bins):
        sel = flat[idx == k]
        anchors.append(float(sel.mean()) if sel.size else float(lo))
    return anchors
