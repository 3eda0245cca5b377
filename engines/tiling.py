"""Sliding-window tiling and count-preserving stitching.

One implementation for the trainer's evaluation, ``engines.predict`` and the pipeline's tile
and post stages. Windows are laid on a frame padded (bottom/right, zeros) to a multiple of the model's block
size; the last window in each direction is shifted back to end at the border, so every window lies
inside the frame and starts on the block grid. Overlaps are averaged, which keeps the count when the
windows agree (the official CLIP-EBC merge). :meth:`TileLayout.plan` is memoised: a layout is
immutable and a camera's frame size rarely changes, so the stage that cuts a frame size and the
stage that stitches it share one cache (per process) instead of keeping their own.
CLIP-Count's own evaluation strip (right padding, fixed stride, sigmoid-weighted blend) is
:func:`strip_plan` + :func:`strip_blend`.

Example::

    layout = TileLayout.plan(1080, 1920, window=(384, 384), block=8, overlap=0.25)
    tiles = layout.cut(frame_rgb)               # (n, 3, 384, 384) float32 in [0, 1]
    full = layout.stitch(model_output)          # (135, 240) counts per 8x8 block
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    starts = [i * stride for i in range(n - 1)]
    starts.append(length - window)  # border-shifted last window
    return sorted(set(starts))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TileLayout:
    """Where the windows of one frame size lie.

    ``height``/``width`` are the frame's size; ``padded_*`` the size after padding to the block
    grid and, for frames smaller than the window, up to the window.
    """

    height: int
    width: int
    window: tuple[int, int]
    block: int
    positions: tuple[tuple[int, int], ...]
    padded_height: int
    padded_width: int

    @classmethod
    def plan(
        cls,
        height: int,
        width: int,
        window: tuple[int, int],
        block: int,
        overlap: float = 0.0,
    ) -> TileLayout:
        """Lay windows of ``window`` (h, w) over a ``height x width`` frame (memoised).

        ``overlap`` is the share of a window shared with its neighbour (0 <= overlap < 1); the
        stride is rounded down to the block grid. The same arguments return the same (immutable)
        layout object.
        """
        return _plan(int(height), int(width), (int(window[0]), int(window[1])), int(block),
                     float(overlap))

    @property
    def count(self) -> int:
        return len(self.positions)

    @property
    def map_shape(self) -> tuple[int, int]:
        """Shape of the stitched map, covering the frame (not the padding)."""
        return (_round_up(self.height, self.block) // self.block,
                _round_up(self.width, self.block) // self.block)

    def cut(self, frame: np.ndarray, out: np.ndarray | None = None, *, bgr: bool = False) -> np.ndarray:
        """Cut an HxWx3 uint8 frame into (n, 3, wh, ww) float32 tiles scaled to [0, 1] (RGB).

        ``out`` may be a preallocated buffer (a shared-memory batch slot) of at least ``n`` tiles;
        the tiles are written straight into it. ``bgr=True`` swaps channels from OpenCV order.
        """
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {frame.shape[:2]}, layout planned for {(self.height, self.width)}")
        wh, ww = self.window
        n = self.count
        if out is None:
            out = np.empty((n, 3, wh, ww), dtype=np.float32)
        elif out.shape[0] < n or out.shape[1:] != (3, wh, ww):
            raise ValueError(f"buffer {out.shape} cannot hold {n} tiles of {(3, wh, ww)}")
        order = [2, 1, 0] if bgr else [0, 1, 2]
        scale = np.float32(1.0 / 255.0)
        for i, (y, x) in enumerate(self.positions):
            dst = out[i]
            src = frame[y : y + wh, x : x + ww]
            h, w = src.shape[:2]
            if h < wh or w < ww:
                dst.fill(0.0)
            for c_out, c_in in enumerate(order):
                np.multiply(src[:, :, c_in], scale, out=dst[c_out, :h, :w], casting="unsafe")
        return out[:n]

    def stitch(self, tile_maps: np.ndarray) -> np.ndarray:
        """Merge per-window count maps (n, [1,] wh/b, ww/b) into one map of ``map_shape``.

        Cells covered by several windows get the mean of their values, so a region's count is
        kept whatever the overlap.
        """
        maps = tile_maps.reshape(self.count, tile_maps.shape[-2], tile_maps.shape[-1])
        b = self.block
        mh, mw = self.window[0] // b, self.window[1] // b
        if maps.shape[1:] != (mh, mw):
            raise ValueError(f"tile maps are {maps.shape[1:]}, expected {(mh, mw)} for block {b}")
        total = np.zeros((self.padded_height // b, self.padded_width // b), dtype=np.float32)
        cover = np.zeros_like(total)
        for i, (y, x) in enumerate(self.positions):
            total[y // b : y // b + mh, x // b : x // b + mw] += maps[i]
            cover[y // b : y // b + mh, x // b : x // b + mw] += 1.0
        merged = total / np.maximum(cover, 1.0)
        h, w = self.map_shape
        return merged[:h, :w]


@functools.lru_cache(maxsize=256)
def _plan(height: int, width: int, window: tuple[int, int], block: int,
          overlap: float) -> TileLayout:
    """The layout of :meth:`TileLayout.plan`; bounded, since frame sizes in a run are few
    (evaluation over many image sizes just evicts the oldest)."""
    wh, ww = window
    if wh % block or ww % block:
        raise ValueError(f"window {window} must be a multiple of the block size {block}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    ph = max(_round_up(height, block), wh)
    pw = max(_round_up(width, block), ww)
    sh = max(block, int(wh * (1.0 - overlap)) // block * block)
    sw = max(block, int(ww * (1.0 - overlap)) // block * block)
    positions = tuple((y, x) for y in _starts(ph, wh, sh) for x in _starts(pw, ww, sw))
    return TileLayout(height, width, (wh, ww), block, positions, ph, pw)


# -- CLIP-Count's evaluation strip ----------------------------------------------------------------


def strip_plan(width: int, window: int, stride: int) -> tuple[int, list[int]]:
    """CLIP-Count's horizontal windows over a frame ``width`` wide: (padded width, starts).

    As the official ``sliding_window``: the frame is zero-padded on the right by ``stride -
    width % stride`` (always, even when ``width`` is a multiple), then windows start every
    ``stride`` pixels while they fit. A frame narrower than the window is padded up to it (the
    official code has no window for it). ``window`` must be a multiple of ``stride`` so that
    the windows end exactly at the padded border.
    """
    if stride < 1 or window % stride:
        raise ValueError(f"window {window} must be a positive multiple of the stride {stride}")
    padded = max(width + stride - width % stride, window)
    return padded, list(range(0, padded - window + 1, stride))


def sigmoid_ramp(length: int) -> np.ndarray:
    """The official blend weights of the next window: ``sigmoid(linspace(-3, 3, length))``."""
    return 1.0 / (1.0 + np.exp(-np.linspace(-3.0, 3.0, length)))


def strip_blend(maps: np.ndarray, stride: int) -> np.ndarray:
    """Merge per-window maps (n, [1,] h, window) left to right as CLIP-Count's ``window_composite``.

    Each new window overlaps the composite's last ``window - stride`` columns; there the result
    is ``(1 - r) * composite + r * window`` with ``r`` = :func:`sigmoid_ramp`, computed in float64
    and stored in float32 (as the official torch code does). Columns blended before are blended
    again by later windows, exactly as officially. Returns (h, padded width) float32.
    """
    maps = np.asarray(maps, dtype=np.float32)
    maps = maps.reshape(maps.shape[0], maps.shape[-2], maps.shape[-1])
    n, h, window = maps.shape
    blend = window - stride
    if n == 0 or blend < 0:
        raise ValueError(f"need >= 1 window map no narrower than the stride, got {maps.shape}")
    out = np.zeros((h, window + (n - 1) * stride), dtype=np.float32)
    out[:, :window] = maps[0]
    ramp = sigmoid_ramp(blend)
    for i in range(1, n):
        x = i * stride  # the composite so far ends at x + blend
        prev = out[:, x : x + blend].astype(np.float64)
        out[:, x : x + blend] = (1.0 - ramp) * prev + ramp * maps[i, :, :blend]
        out[:, x + blend : x + window] = maps[i, :, blend:]
    return out
