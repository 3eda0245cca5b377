"""CLIP-EBC style preprocessing and augmentation of (image, head points) pairs.

- ``resize_for_training``: keep the aspect ratio so the short side is at least ``min_side`` and the
  long side at most ``max_side``, then round both sides to ``multiple`` (points scaled alike).
- ``augment``: a random crop of ``crop * s`` pixels with ``s`` in ``[zoom_min, zoom_max]`` resized
  back to ``crop`` (s > 1 zooms out: heads shrink, blocks get denser; s < 1 zooms in: people look
  as big as near a camera), horizontal flip, colour jitter, Gaussian
  blur and salt-and-pepper noise, each with its own probability. All randomness comes from the
  ``numpy.random.Generator`` passed in, so a (seed, epoch, index) triple replays exactly.

Example::

    img, pts = resize_for_training(rgb, points, min_side=448, max_side=2048, multiple=32)
    crop, cpts = augment(img, pts, AugmentConfig(crop=(448, 448)), np.random.default_rng(0))
"""

from __future__ import annotations

from typing import Annotated

import cv2
import numpy as np
from pydantic import Field, PositiveInt, model_validator

from engines.yamlconfig import ConfigModel, Pair, rule_error

Probability = Annotated[float, Field(ge=0, le=1)]


class AugmentConfig(ConfigModel):
    """Training-time augmentation; probabilities are per sample."""

    crop: Pair[PositiveInt] = Field((448, 448), description="[height, width] of the network "
                                                            "input during training.")
    # below 1: zoom in (a smaller region enlarged: people look bigger, as near a camera);
    # s is drawn log-uniformly when the range straddles 1, so in and out are equally likely
    zoom_max: float = Field(2.0, gt=0, description="Crop s*crop pixels, s ~ U[zoom_min, "
                                                   "zoom_max], then resize to crop (> 1: zoom "
                                                   "out).")
    zoom_min: float = Field(1.0, gt=0, description="Smallest zoom (< 1: zoom in; the range is "
                                                   "log-uniform when it straddles 1).")
    hflip: Probability = Field(0.5, description="Probability of a horizontal flip.")
    jitter_p: Probability = Field(0.2, description="Probability of colour jitter.")
    brightness: float = Field(0.1, ge=0, description="Colour jitter: brightness range.")
    contrast: float = Field(0.1, ge=0, description="Colour jitter: contrast range.")
    saturation: float = Field(0.1, ge=0, description="Colour jitter: saturation range.")
    blur_p: Probability = Field(0.2, description="Probability of a Gaussian blur.")
    noise_p: Probability = Field(0.5, description="Probability of salt-and-pepper noise.")
    noise_amount: Probability = Field(1e-3, description="Share of the pixels salt-and-pepper "
                                                        "noise changes.")

    @model_validator(mode="after")
    def _zoom_range(self) -> AugmentConfig:
        if self.zoom_min > self.zoom_max:
            raise rule_error(f"must be <= zoom_max ({self.zoom_max:g}), got {self.zoom_min:g}",
                             "zoom_min")
        return self


def resize_for_training(image: np.ndarray, points: np.ndarray, *, min_side: int | None = None,
                        max_side: int | None = None, multiple: int = 8
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Resize keeping the aspect ratio within [min_side, max_side], sides rounded to ``multiple``."""
    h, w = image.shape[:2]
    scale = 1.0
    if min_side and min(h, w) * scale < min_side:
        scale = min_side / min(h, w)
    if max_side and max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    nh = max(multiple, int(round(h * scale / multiple)) * multiple)
    nw = max(multiple, int(round(w * scale / multiple)) * multiple)
    if (nh, nw) == (h, w):
        return image, points
    out = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_CUBIC)
    pts = points.astype(np.float32) * np.array([nw / w, nh / h], dtype=np.float32)
    return out, pts


def augment(image: np.ndarray, points: np.ndarray, cfg: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random training view: uint8 HxWx3 ``crop``-sized image and its points."""
    ch, cw = cfg.crop
    h, w = image.shape[:2]
    s = _zoom(cfg.zoom_min, cfg.zoom_max, rng)
    # the zoomed window, limited to the image (then resized to exactly crop)
    wh, ww = min(h, int(round(ch * s))), min(w, int(round(cw * s)))
    if h < ch or w < cw:  # small image: pad to the crop so the window always exists
        image = _pad_to(image, max(h, ch), max(w, cw))
        h, w = image.shape[:2]
        wh, ww = max(wh, ch), max(ww, cw)
    y0 = int(rng.integers(0, h - wh + 1))
    x0 = int(rng.integers(0, w - ww + 1))
    view = image[y0:y0 + wh, x0:x0 + ww]
    pts = points.astype(np.float32) - np.array([x0, y0], dtype=np.float32)
    keep = (pts[:, 0] >= 0) & (pts[:, 0] < ww) & (pts[:, 1] >= 0) & (pts[:, 1] < wh)
    pts = pts[keep]
    if (wh, ww) != (ch, cw):
        view = cv2.resize(view, (cw, ch), interpolation=cv2.INTER_CUBIC)
        pts = pts * np.array([cw / ww, ch / wh], dtype=np.float32)
    else:
        view = view.copy()
    if rng.random() < cfg.hflip:
        view = view[:, ::-1].copy()
        pts = pts.copy()
        pts[:, 0] = cw - pts[:, 0]
        pts[:, 0] = np.clip(pts[:, 0], 0, cw - 1e-3)
    if rng.random() < cfg.jitter_p:
        view = _colour_jitter(view, cfg, rng)
    if rng.random() < cfg.blur_p:
        sigma = float(rng.uniform(0.1, 5.0))
        view = cv2.GaussianBlur(view, (5, 5), sigma)
    if rng.random() < cfg.noise_p and cfg.noise_amount > 0:
        view = _salt_pepper(view, cfg.noise_amount, rng)
    return view, pts


def _zoom(lo: float, hi: float, rng: np.random.Generator) -> float:
    if hi <= lo:
        return lo
    if lo >= 1.0:  # the original zoom-out rule, unchanged: s ~ U[1, zoom_max]
        return float(rng.uniform(lo, hi))
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def to_tensor_layout(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32 in [0, 1] (the model normalises inside)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def _pad_to(image: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w, 3), dtype=image.dtype)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def _colour_jitter(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    b = 1.0 + float(rng.uniform(-cfg.brightness, cfg.brightness))
    c = 1.0 + float(rng.uniform(-cfg.contrast, cfg.contrast))
    s = 1.0 + float(rng.uniform(-cfg.saturation, cfg.saturation))
    x *= b
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - grey.mean()) * c + grey.mean()
    grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    x = (x - grey) * s + grey
    return np.clip(x, 0, 255).astype(np.uint8)


def _salt_pepper(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    n = int(amount * h * w)
    if n == 0:
        return img
    out = img.copy()
    out[rng.integers(0, h, n), rng.integers(0, w, n)] = 255
    out[rng.integers(0, h, n), rng.integers(0, w, n)] = 0
    return out
