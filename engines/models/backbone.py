"""open_clip towers for the counting models: build, load pretrained weights, encode text.

The counting models keep only open_clip's *vision* tower; the text tower is built, used once to
encode the prompts, and dropped. Three ways to get a tower, all driven by ``ModelSpec``:

* ``load_towers(spec)``: (vision tower, text model) with ``spec.pretrained`` weights (an open_clip
  tag such as ``"openai"`` or a local file) or random init; used at model creation.
* ``vision_tower(spec)``: the vision tower alone, random init; used when the weights come from a
  checkpoint anyway (no text tower, no download).
* ``encode_prompts(text, spec, prompts)``: L2-normalised text features (K, embed_dim).

Example::

    visual, text = load_towers(spec)
    feats = encode_prompts(text, spec, list(spec.prompts))
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engines.models.spec import ModelSpec


def tiny_text_config() -> dict[str, Any]:
    """A 2-layer, width-64 open_clip text tower config for the tiny random-init specs."""
    return {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}


def backbone_config(spec: ModelSpec) -> dict[str, Any]:
    """The open_clip config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``...) of the spec."""
    if isinstance(spec.backbone, dict):
        cfg = copy.deepcopy(spec.backbone)
        cfg.pop("name", None)
        for key in ("embed_dim", "vision_cfg", "text_cfg"):
            if key not in cfg:
                raise ValueError(f"inline backbone config is missing {key!r}: {spec.backbone}")
        return cfg
    import open_clip

    cfg = open_clip.get_model_config(spec.backbone)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {spec.backbone!r}; "
                         f"see open_clip.list_models()")
    return copy.deepcopy(cfg)


def is_resnet(spec: ModelSpec) -> bool:
    """True when the vision tower is open_clip's ModifiedResNet (``layers`` is a list)."""
    return isinstance(backbone_config(spec)["vision_cfg"].get("layers"), (list, tuple))


def _quick_gelu(spec: ModelSpec, cfg: dict[str, Any]) -> bool:
    return bool(spec.quick_gelu or cfg.get("quick_gelu", False))


def vision_tower(spec: ModelSpec) -> nn.Module:
    """A randomly initialised open_clip vision tower for ``spec`` (no text tower)."""
    from open_clip.model import _build_vision_tower

    cfg = backbone_config(spec)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=_quick_gelu(spec, cfg))


def text_tower(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """A random-init open_clip text tower, the same for every call with the same ``seed``.

    Random-init models get their text features from this; seeding keeps them reproducible
    (a CLIP-Count prompt encoded later matches the one encoded at build).
    """
    from open_clip.model import _build_text_tower

    cfg = backbone_config(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=_quick_gelu(spec, cfg))
    return text.eval()


def load_towers(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    """(vision tower, text model) of ``spec``, with ``spec.pretrained`` weights if given.

    ``pretrained`` is an open_clip tag (``"openai"``) for a named backbone, or a path to a local
    weights file (an open_clip/OpenAI CLIP state dict) for named and inline backbones. Without it
    the vision tower is random (re-randomised, see :func:`rerandomise_resnet`) and the text tower
    random but seeded. The text model is the whole CLIP when pretrained (use it for text only).
    """
    if not spec.pretrained:
        visual = vision_tower(spec)
        rerandomise_resnet(visual)
        return visual, text_tower(spec)
    import open_clip

    cfg = backbone_config(spec)
    qg = _quick_gelu(spec, cfg)
    if isinstance(spec.backbone, str):
        if not os.path.exists(spec.pretrained):
            tags = open_clip.list_pretrained_tags_by_model(spec.backbone)
            if spec.pretrained not in tags:
                raise ValueError(f"pretrained {spec.pretrained!r} is neither a file nor an open_clip "
                                 f"tag of {spec.backbone} (tags: {tags})")
        model = open_clip.create_model(spec.backbone, pretrained=spec.pretrained, force_quick_gelu=qg)
    else:
        if not os.path.exists(spec.pretrained):
            raise FileNotFoundError(f"pretrained weights file not found: {spec.pretrained}")
        model = open_clip.model.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                                     text_cfg=cfg["text_cfg"], quick_gelu=qg)
        state = torch.load(spec.pretrained, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{spec.pretrained}: does not fit the inline backbone: {exc}") from exc
    model.eval()
    return model.visual, model


def tokenizer_for(spec: ModelSpec) -> Any:
    """open_clip's tokenizer for the backbone (inline configs use the CLIP BPE tokenizer)."""
    import open_clip

    if isinstance(spec.backbone, str):
        return open_clip.get_tokenizer(spec.backbone)
    ctx = int(spec.backbone["text_cfg"].get("context_length", 77))
    return open_clip.tokenizer.SimpleTokenizer(context_length=ctx)


def text_parts(text: nn.Module) -> nn.Module:
    """The module holding ``token_embedding`` ... ``text_projection`` (CLIP or its ``.text``)."""
    inner = getattr(text, "text", None)
    return inner if isinstance(inner, nn.Module) else text


@torch.no_grad()
def encode_prompts(text: nn.Module, spec: ModelSpec, prompts: list[str]) -> torch.Tensor:
    """L2-normalised text features (len(prompts), embed_dim), float32 on CPU."""
    tokens = tokenizer_for(spec)(prompts)
    device = next(text.parameters()).device
    if hasattr(text, "encode_text"):
        feats = text.encode_text(tokens.to(device))
    else:
        feats = text(tokens.to(device))
    if isinstance(feats, tuple):
        feats = feats[0]
    return F.normalize(feats.float(), dim=-1).cpu()


def rerandomise_resnet(visual: nn.Module) -> None:
    """Make a random-init ResNet tower informative (random-init models only).

    open_clip zero-inits each block's last BN (``bn3.weight == 0``: every residual branch off) and
    uses PyTorch's default conv init, whose activations shrink layer by layer while eval-mode BN
    assumes unit variance; the tower's output is then almost constant over the image and tests
    would compare degenerate maps. Kaiming-normal convs and non-zero BN scales fix both.
    """
    if not hasattr(visual, "layer1"):
        return
    with torch.no_grad():
        for name, module in visual.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d) and name.endswith("bn3"):
                module.weight.uniform_(0.5, 1.0)


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int],
                     new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a ViT positional embedding (1 + gh*gw, C); the CLS row is kept."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    c = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], c).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


def vit_embed(visual: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Patch tokens with the class token prepended and positional embeddings resized to the grid.

    Returns ``(tokens (B, 1 + gh*gw, width), gh, gw)``, before ``ln_pre``: CLIP-EBC inserts its
    prompts after ``ln_pre`` and CLIP-Count before it, so each model continues from here.
    """
    x = visual.conv1(x)
    b, c, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls_tok = visual.class_embedding.to(x.dtype).view(1, 1, c).expand(b, 1, c)
    pos = resize_pos_embed(visual.positional_embedding, tuple(visual.grid_size), (gh, gw))
    return torch.cat([cls_tok, x], dim=1) + pos.to(x.dtype).unsqueeze(0), gh, gw


def vit_grid(visual: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """The patch grid of an input of ``size`` (h, w); errors if not a multiple of the patch."""
    ph, pw = visual.conv1.kernel_size
    if size[0] % ph or size[1] % pw:
        raise ValueError(f"input {size} is not a multiple of the ViT patch size {(ph, pw)}")
    return (size[0] // ph, size[1] // pw)


def set_vit_grid(visual: nn.Module, grid: tuple[int, int]) -> None:
    """Resize the tower's positional embedding to ``grid`` in place (done once, at build)."""
    old = tuple(visual.grid_size)
    if old == tuple(grid):
        return
    new = resize_pos_embed(visual.positional_embedding.data, old, grid)
    visual.positional_embedding = nn.Parameter(new, requires_grad=visual.positional_embedding.requires_grad)
    visual.grid_size = tuple(grid)
