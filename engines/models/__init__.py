"""Counting models (CLIP-EBC, CLIP-Count) built from a :class:`ModelSpec`.

``create_model(spec)`` builds the model a spec describes (open_clip weights from
``spec.pretrained``, or random init); ``small_spec(name)`` gives tiny random-init configs for tests
and CPU experiments. Every model takes float32 RGB in [0, 1], (B, 3, H, W), normalises inside and
returns (B, 1, H/b, W/b) objects per cell, ``b = model.block_size``.

Example::

    from engines.models import create_model, small_spec
    model = create_model(small_spec("ebc-tiny-rn")).eval()
    counts = model(torch.rand(1, 3, 224, 224))      # (1, 1, 28, 28)
    print(float(counts.sum()))
"""

from __future__ import annotations

from typing import Any

from torch import nn

from engines.models.bins import official_bins
from engines.models.spec import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ModelSpec

__all__ = ["ModelSpec", "create_model", "build_empty", "small_spec", "SMALL_SPECS"]

_TINY_TEXT: dict[str, Any] = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                              "layers": 2}


def _tiny_rn() -> ModelSpec:
    bins, anchors = official_bins("sha", 4)
    backbone = {"name": "tiny-rn", "embed_dim": 64,
                "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 224,
                               "head_width": 64},
                "text_cfg": dict(_TINY_TEXT)}
    return ModelSpec(family="clip_ebc", backbone=backbone, window=(224, 224), block_size=8,
                     bins=tuple(bins), anchors=tuple(anchors), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     decoder_channels=(128,), name="ebc-tiny-rn", dataset="sha", truncation=4)


def _tiny_vit() -> ModelSpec:
    bins, anchors = official_bins("sha", 4)
    backbone = {"name": "tiny-vit", "embed_dim": 64,
                "vision_cfg": {"layers": 2, "width": 64, "patch_size": 16, "head_width": 32,
                               "image_size": 224},
                "text_cfg": dict(_TINY_TEXT)}
    return ModelSpec(family="clip_ebc", backbone=backbone, window=(224, 224), block_size=8,
                     bins=tuple(bins), anchors=tuple(anchors), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     num_vpt=4, deep_vpt=True, name="ebc-tiny-vit", dataset="sha", truncation=4)


def _tiny_count() -> ModelSpec:
    backbone = {"name": "tiny-vit3", "embed_dim": 128,
                "vision_cfg": {"layers": 3, "width": 64, "patch_size": 16, "head_width": 32,
                               "image_size": 64},
                "text_cfg": dict(_TINY_TEXT)}
    return ModelSpec(family="clip_count", backbone=backbone, window=(128, 128), block_size=1,
                     mean=CLIP_MEAN, std=CLIP_STD, resize_height=128, encoder_size=64,
                     num_vpt=4, vpt_depth=2, heads=4, text_prompt="people", density_scale=60.0,
                     name="count-tiny")


SMALL_SPECS = {"ebc-tiny-rn": _tiny_rn, "ebc-tiny-vit": _tiny_vit, "count-tiny": _tiny_count}


def small_spec(name: str) -> ModelSpec:
    """A tiny random-init config by name: ``ebc-tiny-rn``, ``ebc-tiny-vit``, ``count-tiny``."""
    try:
        return SMALL_SPECS[name]()
    except KeyError:
        raise ValueError(f"unknown small model {name!r}; known: {sorted(SMALL_SPECS)}") from None


def create_model(spec: ModelSpec) -> nn.Module:
    """Build the model of ``spec``: backbone weights from ``spec.pretrained`` (open_clip tag or
    local file) or random init; text features encoded once by the frozen text tower."""
    if spec.family == "clip_ebc":
        from engines.models.clip_ebc import ClipEBC

        return ClipEBC.build(spec)
    if spec.family == "clip_count":
        from engines.models.clip_count import ClipCount

        return ClipCount.build(spec)
    raise ValueError(f"unknown model family {spec.family!r}")


def build_empty(spec: ModelSpec) -> nn.Module:
    """The model's structure with random weights and no text tower, for loading a state dict."""
    if spec.family == "clip_ebc":
        from engines.models.clip_ebc import ClipEBC

        return ClipEBC(spec)
    if spec.family == "clip_count":
        from engines.models.clip_count import ClipCount

        return ClipCount(spec)
    raise ValueError(f"unknown model family {spec.family!r}")
