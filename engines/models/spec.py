"""``ModelSpec``: everything needed to rebuild a counting model, as plain data.

A spec travels inside every checkpoint (``engines.checkpoint``) and every engine sidecar, so a model
file describes itself: the family, the open_clip backbone, the window, the bins/anchors/prompts,
the normalisation and the head options. Nothing about the model is guessed at call time.

The backbone is either an open_clip model name (``"RN50"``, ``"ViT-B-16"``; ``pretrained`` then
names an open_clip tag such as ``"openai"`` or a local weights file) or an *inline* open_clip-style
config for small random-init models::

    {"embed_dim": 64,
     "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 224},   # ResNet
     "text_cfg": {"width": 64, "heads": 2, "layers": 2, "context_length": 77,
                  "vocab_size": 49408}}

``vision_cfg.layers`` as a list of 4 ints selects open_clip's ``ModifiedResNet``; an int selects
its ``VisionTransformer`` (then give ``width``, ``patch_size``, ``head_width``). Example of a
CPU-sized CLIP-EBC config for training (what ``small_spec("ebc-tiny-rn")`` returns, resized)::

    from engines.models import create_model, small_spec
    spec = small_spec("ebc-tiny-rn").replace(window=(256, 256))
    spec = spec.with_bins(bins, anchors)         # e.g. anchors measured on the training set
    model = create_model(spec)                   # random init, text features computed once
    ModelSpec.from_dict(spec.to_dict()) == spec  # True
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from engines.models.registry import model_class

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Bin = tuple[float, float | None]  # inclusive [lo, hi]; hi None means +infinity


def _tuple2(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be (height, width), got {value!r}") from exc
    return (h, w)


@dataclass(frozen=True)
class ModelSpec:
    """The full configuration of one counting model.

    Common fields:
      family: a registered model family (``engines.models.list_families()``): ``"clip_ebc"``
        (blockwise classification) or ``"clip_count"`` (text-guided density).
      backbone: open_clip model name or inline open_clip config dict (see module docstring).
      pretrained: open_clip tag (``"openai"``) or local file for the backbone; ``None`` = random.
      quick_gelu: build the towers with QuickGELU (OpenAI CLIP weights were trained with it).
      window: (h, w) input the model is built for; the sliding-window size in ``predict``.
      block_size: output cell side in input pixels (8 for CLIP-EBC, 1 for CLIP-Count).
      mean/std: normalisation applied INSIDE the model to RGB input in [0, 1].
      resize_height: ``predict`` resizes frames to this height first (CLIP-Count: 384).
      min_side: ``predict`` upscales frames whose shorter side is below this (default window).
      max_side: ``predict`` (and the pipeline) downscale frames whose longer side is above this:
        the resolution the model was trained to see people at.

    CLIP-EBC fields: ``bins`` (``[lo, hi]`` inclusive, ``hi=None`` for infinity), ``anchors``
    (count represented by each bin), ``prompt_type`` (``"word"``/``"number"``), ``prompts`` (one
    per bin, generated from the bins), ``num_vpt``/``deep_vpt``/``vpt_drop`` (visual prompt tuning
    on ViT backbones), ``decoder`` (``"auto"``: Bottleneck for ResNets, BasicBlock for ViTs),
    ``decoder_channels`` (``None`` = the encoder's width, as in the official model), ``head``
    (``"bins"``: the CLIP-EBC count-bin head against the prompts' text features, the official
    model; ``"density"``: a 1x1 convolution regressing each block's count directly, the DM-Count
    way, for towers trained from random init, whose text features mean nothing).

    CLIP-Count fields: ``text_prompt`` (class name, e.g. ``"people"``), ``density_scale`` (60),
    ``heads`` (interaction-module heads; the released checkpoint uses 4), ``vpt_depth`` and
    ``num_vpt`` (visual prompts depth x tokens), ``encoder_size`` (the CLIP input the window is
    resized to inside the model, 224), ``n_ctx`` (learnable text context vectors),
    ``coop_eot_fix`` (read the text feature at the EOT token's position *after* inserting the
    context; the released model reads it at the original index, see ``clip_count``).

    Provenance (not used to build): ``name``, ``dataset``, ``truncation``.
    """

    family: str
    backbone: str | dict[str, Any]
    window: tuple[int, int]
    block_size: int
    pretrained: str | None = None
    quick_gelu: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_height: int | None = None
    min_side: int | None = None
    max_side: int | None = None
    # CLIP-EBC head
    bins: tuple[Bin, ...] = ()
    anchors: tuple[float, ...] = ()
    prompt_type: Literal["word", "number"] = "word"
    prompts: tuple[str, ...] = ()
    num_vpt: int = 0
    deep_vpt: bool = True
    vpt_drop: float = 0.0
    decoder: Literal["auto", "bottleneck", "basic"] = "auto"
    decoder_channels: tuple[int, ...] | None = None
    head: Literal["bins", "density"] = "bins"
    # CLIP-Count head
    text_prompt: str = "people"
    density_scale: float = 60.0
    heads: int = 4
    vpt_depth: int = 0
    encoder_size: int | None = None
    n_ctx: int = 2
    coop_eot_fix: bool = False
    # provenance
    name: str = ""
    dataset: str | None = None
    truncation: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        family = model_class(self.family)  # unknown: a ValueError naming the registered ones
        if not isinstance(self.backbone, (str, dict)):
            raise ValueError(f"backbone must be an open_clip name or a config dict, got {self.backbone!r}")
        object.__setattr__(self, "window", _tuple2(self.window, "window"))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean/std need 3 values, got {self.mean} / {self.std}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        bins = tuple(
            (float(lo), None if hi is None or math.isinf(float(hi)) else float(hi))
            for lo, hi in self.bins
        )
        object.__setattr__(self, "bins", bins)
        object.__setattr__(self, "anchors", tuple(float(a) for a in self.anchors))
        object.__setattr__(self, "prompts", tuple(str(p) for p in self.prompts))
        if self.decoder_channels is not None:
            object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        # the family's own fields (bins and prompts for CLIP-EBC...), checked and completed
        for key, value in family.check_spec(self).items():
            object.__setattr__(self, key, value)
        if self.window[0] % self.block_size or self.window[1] % self.block_size:
            raise ValueError(f"window {self.window} is not a multiple of block_size {self.block_size}")

    # -- derived -----------------------------------------------------------------------------

    @property
    def backbone_name(self) -> str:
        """A short label for logs: the open_clip name or ``"custom"``."""
        return self.backbone if isinstance(self.backbone, str) else str(self.backbone.get("name", "custom"))

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated again).

        Changing ``bins`` or ``prompt_type`` without giving ``prompts`` regenerates the prompts.
        """
        if ("bins" in changes or "prompt_type" in changes) and "prompts" not in changes:
            changes["prompts"] = ()
        return dataclasses.replace(self, **changes)

    def with_bins(self, bins: list[Bin] | tuple[Bin, ...], anchors: list[float] | tuple[float, ...],
                  prompt_type: str | None = None) -> ModelSpec:
        """A copy with new bins/anchors and prompts regenerated from them."""
        from engines.models.bins import make_prompts

        ptype = prompt_type or self.prompt_type
        return dataclasses.replace(self, bins=tuple(bins), anchors=tuple(anchors),
                                   prompt_type=ptype, prompts=tuple(make_prompts(bins, ptype)))

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (lists, not tuples)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "bins":
                v = [[lo, hi] for lo, hi in v]
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = copy.deepcopy(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error (names them)."""
        if not isinstance(data, dict):
            raise ValueError(f"model spec must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model spec keys: {unknown}")
        missing = sorted(k for k in ("family", "backbone", "window", "block_size") if k not in data)
        if missing:
            raise ValueError(f"model spec is missing required keys: {missing}")
        kw = dict(data)
        if "bins" in kw:
            kw["bins"] = tuple(tuple(b) for b in kw["bins"])
        for key in ("anchors", "prompts", "mean", "std"):
            if key in kw:
                kw[key] = tuple(kw[key])
        if kw.get("decoder_channels") is not None:
            kw["decoder_channels"] = tuple(kw["decoder_channels"])
        return cls(**kw)
