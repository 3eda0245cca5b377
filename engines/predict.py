"""Any-resolution prediction: resize by the model's rules, sliding windows, batched, stitched.

``predict`` accepts a counting model (``engines.models``, a torch module with ``.spec``) or an
engine (``engines.backends``: ``.run(batch)``, ``.window``, ``.block_size``, ``.max_batch``). The
windows come from ``engines.tiling.TileLayout`` (the same tiling the pipeline and the trainer
use): laid on the block grid, the last one shifted back to the border, overlaps averaged.

Resize rules, from the model's spec: ``resize_height`` (CLIP-Count: every frame to height 384,
keeping the aspect) or ``min_side`` (frames whose shorter side is smaller are upscaled, bicubic).
Otherwise frames keep their size (frames smaller than the window are zero-padded by the tiling).

``tiling="clip_count"`` reproduces CLIP-Count's official test-time procedure instead (for
per-pixel models, ``block_size`` 1): portrait frames are turned to landscape (as the official
ShanghaiTech loader does; the map is turned back), the short side is resized to the window height
(PIL bilinear, as torchvision's ``Resize(384)``), the frame is zero-padded on the right by
``stride - W % stride`` with ``stride = window / 3`` (128 for 384), windows at that stride are
blended with a sigmoid ramp (``engines.tiling.strip_blend``) and the map is cropped back. The
plain tiling stays the default (it is what the video pipeline runs).

Example::

    model, _ = load_checkpoint("model.pt")
    dm = predict(model, frame_rgb, overlap=0.25)
    print(dm.count, dm.map.shape, dm.cell_pixels)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.density import DensityMap
from engines.tiling import TileLayout, strip_blend, strip_plan

TILINGS = ("plain", "clip_count")


def _geometry(model: Any) -> tuple[tuple[int, int], int, Any]:
    spec = getattr(model, "spec", None)
    window = getattr(model, "window", None) or (spec.window if spec is not None else None)
    block = getattr(model, "block_size", None) or (spec.block_size if spec is not None else None)
    if window is None or block is None:
        raise TypeError(f"{type(model).__name__} has no window/block_size (not a counting model or engine)")
    return (int(window[0]), int(window[1])), int(block), spec


@dataclass(frozen=True)
class ResizeRule:
    """How a frame is resized before tiling: the model's rule (its spec's ``resize_height``,
    ``min_side``, ``max_side``) times a camera's own ``scale`` when it sets one. One rule for
    ``predict``, the trainer's evaluation and the pipeline's tile stage.

    Example::

        ResizeRule(max_side=1280).size(1080, 1920)      # (720, 1280)
        ResizeRule(scale=0.5).size(432, 768)             # (216, 384): people near the camera
    """

    resize_height: int | None = None
    min_side: int | None = None
    max_side: int | None = None
    scale: float | None = None  # a camera's override: multiply the frame by this instead

    @classmethod
    def from_spec(cls, spec: Any, scale: float | None = None) -> ResizeRule:
        """The rule a ``ModelSpec`` states."""
        return cls(getattr(spec, "resize_height", None), getattr(spec, "min_side", None),
                   getattr(spec, "max_side", None), scale)

    @classmethod
    def of(cls, model_or_engine: Any, scale: float | None = None) -> ResizeRule:
        """The rule of a model (its spec) or an engine (its description's ``resize``)."""
        spec = getattr(model_or_engine, "spec", None)
        if spec is not None:
            return cls.from_spec(spec, scale)
        desc = getattr(model_or_engine, "description", None) or {}
        return cls.from_dict(desc.get("resize"), scale)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, scale: float | None = None) -> ResizeRule:
        d = d or {}
        return cls(d.get("resize_height"), d.get("min_side"), d.get("max_side"), scale)

    def to_dict(self) -> dict[str, Any]:
        return {"resize_height": self.resize_height, "min_side": self.min_side,
                "max_side": self.max_side}

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) a ``height x width`` frame is counted at."""
        if self.scale:
            return max(1, round(height * self.scale)), max(1, round(width * self.scale))
        if self.resize_height:
            t = self.resize_height
            return int(t), max(1, round(width * t / height))
        if self.min_side and min(height, width) < self.min_side:
            s = self.min_side / min(height, width)
            return max(self.min_side, round(height * s)), max(self.min_side, round(width * s))
        if self.max_side and max(height, width) > self.max_side:
            s = self.max_side / max(height, width)
            return max(1, round(height * s)), max(1, round(width * s))
        return height, width


def resize_for(spec: Any, height: int, width: int) -> tuple[int, int]:
    """The (h, w) a frame of ``height x width`` is resized to before tiling, by the spec's rules."""
    return ResizeRule.from_spec(spec).size(height, width)


def resize_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (h, w): area averaging to shrink, bicubic to enlarge."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    interp = cv2.INTER_AREA if size[0] * size[1] < h * w else cv2.INTER_CUBIC
    return cv2.resize(image, (size[1], size[0]), interpolation=interp)


def _run_torch(model: Any, tiles: np.ndarray) -> np.ndarray:
    import torch

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.inference_mode():
        out = model(torch.from_numpy(tiles).to(device))
    return out.float().cpu().numpy()


def _whole_image(model: Any, image: np.ndarray, block: int) -> np.ndarray:
    """One forward over the whole frame, zero-padded to the model's grid (official ResNet eval)."""
    if not getattr(model, "whole_image", True):
        name = getattr(model, "title", "") or type(model).__name__
        raise ValueError(f"whole-image prediction is for models that take any frame size "
                         f"(CLIP-EBC); {name} sees fixed windows")
    step = int(np.lcm(int(getattr(model, "encoder_stride", block)), block))
    h, w = image.shape[:2]
    ph, pw = -(-h // step) * step, -(-w // step) * step
    x = np.zeros((1, 3, ph, pw), np.float32)
    x[0, :, :h, :w] = image.transpose(2, 0, 1) / np.float32(255.0)
    out = _run_torch(model, x)[0, 0]
    return out[: -(-h // block), : -(-w // block)]


def _run_batches(model_or_engine: Any, tiles: np.ndarray, batch_size: int | None) -> np.ndarray:
    """Run (n, 3, h, w) tiles ``batch_size`` at a time (default: the engine's ``max_batch``, or
    8), in eval mode; (n, 1, h', w') maps."""
    is_engine = _is_engine(model_or_engine)
    bs = batch_size or (int(getattr(model_or_engine, "max_batch", 8)) if is_engine else 8)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    training = bool(getattr(model_or_engine, "training", False))
    if training:
        model_or_engine.eval()  # BN/dropout in eval mode for prediction; restored below
    try:
        outs = []
        for i in range(0, tiles.shape[0], bs):
            chunk = tiles[i : i + bs]
            if is_engine:
                outs.append(np.asarray(model_or_engine.run(chunk), dtype=np.float32))
            else:
                outs.append(_run_torch(model_or_engine, chunk))
    finally:
        if training:
            model_or_engine.train()
    return np.concatenate(outs, axis=0)


def _is_engine(model_or_engine: Any) -> bool:
    return hasattr(model_or_engine, "run") and not hasattr(model_or_engine, "parameters")


def clip_count_size(height: int, width: int, target: int) -> tuple[int, int]:
    """torchvision ``Resize(target)`` on a landscape frame: short side (height) to ``target``,
    long side ``int(target * width / height)`` (truncated, as torchvision does)."""
    return target, max(1, int(target * width / height))


def _clip_count_strip(model_or_engine: Any, image: np.ndarray, window: tuple[int, int],
                      block: int, batch_size: int | None) -> DensityMap:
    if block != 1 or window[0] != window[1] or window[0] % 3:
        raise ValueError(f"tiling 'clip_count' needs a per-pixel model (block_size 1) with a "
                         f"square window divisible by 3 (CLIP-Count: 384), got window {window}, "
                         f"block {block}")
    size = window[0]
    stride = size // 3
    portrait = image.shape[0] > image.shape[1]
    if portrait:
        image = np.rot90(image, k=1)  # PIL rotate(90, expand=True): counter-clockwise
    h, w = image.shape[:2]
    nh, nw = clip_count_size(h, w, size)
    if (nh, nw) != (h, w):
        from PIL import Image

        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
            (nw, nh), Image.Resampling.BILINEAR))
    padded, starts = strip_plan(nw, size, stride)
    frame = np.zeros((3, size, padded), dtype=np.float32)
    frame[:, :, :nw] = image.transpose(2, 0, 1) / np.float32(255.0)
    tiles = np.stack([frame[:, :, x : x + size] for x in starts])
    maps = _run_batches(model_or_engine, tiles, batch_size)
    merged = strip_blend(maps, stride)[:, :nw]
    if portrait:
        merged = np.ascontiguousarray(np.rot90(merged, k=-1))
    return DensityMap(merged, block_size=1, scale=nh / h)


def predict(model_or_engine: Any, image: np.ndarray, overlap: float = 0.0, *,
            batch_size: int | None = None, whole: bool = False,
            tiling: str = "plain", input_scale: float | None = None) -> DensityMap:
    """Count ``image`` (H x W x 3 uint8 RGB, any size) with a model or engine.

    Frames are first resized by the model's rule (``ResizeRule``), or by ``input_scale`` when
    given (a camera's own scale). ``overlap`` is the share of a window shared with its neighbour
    (0 <= overlap < 1); windows
    run ``batch_size`` at a time (default: the engine's ``max_batch``, or 8). ``whole=True``
    (torch CLIP-EBC models only) runs the whole frame in one forward instead, as the official
    ResNet evaluation does. ``tiling="clip_count"`` runs CLIP-Count's official evaluation strip
    (see the module docstring; ``overlap`` does not apply). Returns a ``DensityMap`` whose
    ``scale`` is the resize factor, so ``cell_pixels`` is in the original image's pixels.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an H x W x 3 array, got shape {getattr(image, 'shape', None)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got {image.dtype}")
    if tiling not in TILINGS:
        raise ValueError(f"tiling must be one of {TILINGS}, got {tiling!r}")
    window, block, spec = _geometry(model_or_engine)
    if tiling == "clip_count":
        if whole:
            raise ValueError("whole=True and tiling='clip_count' exclude each other")
        return _clip_count_strip(model_or_engine, image, window, block, batch_size)
    h, w = image.shape[:2]
    nh, nw = ResizeRule.of(model_or_engine, input_scale).size(h, w)
    image = resize_frame(image, (nh, nw))
    scale = nh / h
    if whole:
        if _is_engine(model_or_engine):
            raise ValueError("whole-image prediction needs a torch model (engines have a fixed window)")
        training = bool(model_or_engine.training)
        model_or_engine.eval()
        try:
            merged = _whole_image(model_or_engine, np.ascontiguousarray(image), block)
        finally:
            model_or_engine.train(training)
        return DensityMap(merged, block_size=block, scale=scale)
    layout = TileLayout.plan(nh, nw, window=window, block=block, overlap=overlap)
    tiles = layout.cut(np.ascontiguousarray(image))
    maps = _run_batches(model_or_engine, tiles, batch_size)
    return DensityMap(layout.stitch(maps), block_size=block, scale=scale)
