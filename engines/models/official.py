"""Loading the authors' released checkpoints (CLIP-EBC ``best_*.pth``, CLIP-Count ``.ckpt``).

Both formats lack what our checkpoints carry (the model config, and for CLIP-Count the frozen
CLIP weights), so a spec says what the file is: :func:`official_ebc_spec` (backbone, data set for
the anchors, truncation, input size, VPT) and :func:`official_count_spec`. Mapping is strict:
every tensor must land on a parameter of the same shape and every parameter must be filled;
otherwise :class:`OfficialCheckpointError` lists the missing/unexpected/mismatched keys and names
the likely cause (a ViT-L/14 file offered as ViT-B/16, a VPT setting or bin count that differs).

* CLIP-EBC ``best_*.pth``: plain state dict with ``image_encoder.*``, ``image_decoder.*``,
  ``projection.*``, ``logit_scale``, ``vpt_N`` and the frozen OpenAI ``text_encoder.*``, which is
  used here once to encode the prompts of the spec's bins (bins/anchors are not in the file). A
  ``ckpt.pth`` training state (``model_state_dict``) is accepted too.
* CLIP-Count Lightning ``.ckpt``: ``state_dict`` with ``model.``-prefixed trainable weights; the
  frozen ViT-B/16 and text tower come from ``spec.pretrained`` (open_clip ``"openai"`` weights or a
  local file). ``hyper_parameters`` (heads, VPT size) are read when present.

Example::

    spec = official_ebc_spec("ViT-B-16", dataset="nwpu")
    model = load_official_ebc("best_mae_0.pth", spec)
    save_checkpoint("nwpu_vitb16.pt", model, {"source": "CLIP-EBC release v1.0.0"})

or from a shell: ``crowdstream models convert ebc best_mae_0.pth out.pt --backbone ViT-B-16
--dataset nwpu``; ``crowdstream models pull NAME`` downloads and converts a released file with
the arguments its registry entry records (``engines.models.hub``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.models import backbone as bb
from engines.models.bins import official_bins
from engines.models.spec import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ModelSpec


class OfficialCheckpointError(ValueError):
    """An official checkpoint that does not fit the spec it was offered with."""


# Official accuracy (MAE / RMSE) of the released models, for the README table and reports.
OFFICIAL_ACCURACY: dict[str, dict[str, tuple[float, float]]] = {
    "clip-ebc-vit-b16": {"NWPU test": (61.2, 278.3)},
    "clip-ebc-rn50": {"NWPU test": (75.8, 367.3), "NWPU val": (38.6, 90.3)},
    "clip-count-vit-b16": {"FSC-147 val": (18.93, 66.10), "FSC-147 test": (17.45, 104.88),
                           "CARPK": (11.70, 13.94), "ShanghaiTech A": (197.47, 319.75),
                           "ShanghaiTech B": (47.92, 80.48)},
}


def _is_vit(backbone: str | dict[str, Any]) -> bool:
    if isinstance(backbone, dict):
        return isinstance(backbone.get("vision_cfg", {}).get("layers"), int)
    return backbone.startswith("ViT")


def official_ebc_spec(backbone: str | dict[str, Any], dataset: str, truncation: int = 4,
                      window: int | None = None, num_vpt: int | None = None,
                      prompt_type: str = "word", deep_vpt: bool = True,
                      name: str | None = None) -> ModelSpec:
    """The spec of a released CLIP-EBC model.

    ``backbone``: open_clip name (``ViT-B-16``, ``RN50``, ``RN101``, ``RN50x4``...) or an inline
    open_clip config (small test architectures); ``dataset``/``truncation`` pick the official
    anchors (required: the files do not say which data set they were trained on, and the last
    anchor differs per data set); ``window`` defaults to 224 for ViTs (448 for ResNets, their
    training crop); ``num_vpt`` defaults to 32 for ViTs (use 0 for the v1.0.0 fully fine-tuned
    ViT checkpoints, input 256). ImageNet normalisation, block 8, "fine" bins, "average" anchors.
    """
    if not dataset:
        raise ValueError("official_ebc_spec needs the data set whose anchors the model was "
                         "trained with (sha, shb, nwpu, qnrf, jhu)")
    bins, anchors = official_bins(dataset, truncation)
    is_vit = _is_vit(backbone)
    size = window or (224 if is_vit else 448)
    vpt = (32 if num_vpt is None else num_vpt) if is_vit else 0
    label = backbone if isinstance(backbone, str) else str(backbone.get("name", "custom"))
    return ModelSpec(family="clip_ebc", backbone=backbone, pretrained=None, quick_gelu=True,
                     window=(size, size), block_size=8, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     bins=tuple(bins), anchors=tuple(anchors), prompt_type=prompt_type,  # type: ignore[arg-type]
                     num_vpt=vpt, deep_vpt=deep_vpt, vpt_drop=0.0, dataset=dataset,
                     truncation=truncation,
                     name=name or f"clip-ebc-{label.lower().replace('-', '')}-{dataset}")


def official_count_spec(pretrained: str | None = "openai", heads: int = 4, vpt_width: int = 20,
                        vpt_depth: int = 10, n_ctx: int = 2, text_prompt: str = "people",
                        backbone: str | dict[str, Any] = "ViT-B-16", window: int = 384,
                        encoder_size: int = 224, name: str = "clip-count-vit-b16") -> ModelSpec:
    """The spec of the released CLIP-Count model (ViT-B/16, 4 heads, VPT 10 x 20, 384 window).

    ``pretrained`` is where the frozen CLIP weights come from: the open_clip tag ``"openai"`` or
    a local file with the OpenAI ViT-B/16 CLIP state dict. ``backbone`` may be an inline open_clip
    config (with ``window``/``encoder_size``) for small test architectures.
    """
    return ModelSpec(family="clip_count", backbone=backbone, pretrained=pretrained, quick_gelu=True,
                     window=(window, window), block_size=1, mean=CLIP_MEAN, std=CLIP_STD,
                     resize_height=window, encoder_size=encoder_size, num_vpt=vpt_width,
                     vpt_depth=vpt_depth, heads=heads, n_ctx=n_ctx, text_prompt=text_prompt,
                     density_scale=60.0, name=name)


# -- strict mapping ----------------------------------------------------------------------------


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape) if hasattr(t, "shape") else ()


def _hints(model: nn.Module, mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
           missing: list[str], unexpected: list[str]) -> list[str]:
    """Likely causes, from the keys and shapes that disagree."""
    spec = getattr(model, "spec", None)
    hints: list[str] = []
    for key, got, want in mismatched:
        stem = key in ("image_encoder.conv1.weight", "img_encoder.vit.conv1.weight") and len(got) == 4
        if stem and got[1] == 3 and got[2] > 3:
            hints.append(f"the file's ViT has width {got[0]} and patch {got[2]} but the spec's "
                         f"backbone {spec.backbone_name if spec else '?'} has width {want[0]} and "
                         f"patch {want[2]} (ViT-L/14 is 1024/14, ViT-B/16 768/16, ViT-B/32 768/32)")
        elif stem and got[1] == 3 and got[2] == 3:
            hints.append(f"the file's ResNet stem has {got[0]} channels, the spec's "
                         f"{want[0]} (RN50/RN101 32, RN50x4 40, RN50x16 48, RN50x64 64)")
        elif key.startswith("vpt_") or key.endswith("visual_prompt"):
            hints.append(f"visual prompts differ: file {got}, spec {want} (num_vpt / vpt_depth / "
                         "backbone width)")
        elif key in ("text_features", "text_embedding"):
            hints.append(f"the file has {got[0]} count bins, the spec {want[0]} "
                         "(truncation / bins mismatch)")
        elif key.startswith("projection") or key.startswith("patch_feat_proj"):
            hints.append(f"{key}: file {got}, spec {want}: the CLIP embedding width differs "
                         "(another backbone?)")
    if any(k.startswith("vpt_") for k in unexpected) and spec is not None and not spec.num_vpt:
        hints.append("the file has visual prompts (VPT) but the spec has num_vpt=0: use num_vpt=32")
    if any(k.startswith("vpt_") for k in missing) and not any(k.startswith("vpt_") for k in unexpected):
        hints.append("the spec expects visual prompts the file lacks: a v1.0.0 fully fine-tuned "
                     "ViT checkpoint (input 256) needs num_vpt=0, window 256")
    if any(".layer" in k for k in missing + unexpected):
        hints.append("the ResNet depth differs (RN50 has layers [3,4,6,3], RN101 [3,4,23,3])")
    if any("resblocks" in k for k in missing + unexpected):
        hints.append("the number of transformer layers differs (ViT-B 12, ViT-L 24)")
    return list(dict.fromkeys(hints))


def _short(keys: Iterable[str], n: int = 6) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, *,
                skip: tuple[str, ...] = (), resize_pos: bool = True) -> None:
    """Load ``state`` into ``model``: every key must match in name and shape, or an error.

    ``skip`` lists model key prefixes filled elsewhere (computed text features, frozen towers
    from other weights). A ViT positional embedding of another grid size is resized (bicubic),
    the one tolerated difference, since the official models interpolate it per input size.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = []
    fixed = dict(state)
    for k in own.keys() & state.keys():
        got, want = _shape(state[k]), _shape(own[k])
        if got == want:
            continue
        if resize_pos and k.endswith("positional_embedding") and len(got) == 2 and got[1] == want[1]:
            old = _grid(got[0] - 1)
            new = _grid(want[0] - 1, getattr(model, "grid", None) or _find_grid(model, k))
            if old and new:
                fixed[k] = bb.resize_pos_embed(state[k], old, new)
                continue
        mismatched.append((k, got, want))
    # the keys that tell most about the cause first: patch embedding, prompts, heads
    key_rank = ("image_encoder.conv1.weight", "vit.conv1.weight", "vpt_", "visual_prompt",
                "text_features", "text_embedding", "projection", "patch_feat_proj")

    def rank(m: tuple[str, tuple[int, ...], tuple[int, ...]]) -> tuple[int, str]:
        hits = [i for i, r in enumerate(key_rank) if m[0].startswith(r) or m[0].endswith(r)]
        return (hits[0] if hits else len(key_rank), m[0])

    mismatched.sort(key=rank)
    if missing or unexpected or mismatched:
        parts = [f"{source} does not fit the spec"]
        if mismatched:
            parts.append("shape mismatch: " + "; ".join(f"{k} file {g} vs model {w}" for k, g, w in mismatched[:6]))
        if missing:
            parts.append(f"missing {len(missing)}: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_short(unexpected)}")
        hints = _hints(model, mismatched, missing, unexpected)
        if hints:
            parts.append("likely cause: " + "; ".join(hints))
        raise OfficialCheckpointError(". ".join(parts))
    merged = model.state_dict()
    merged.update({k: v for k, v in fixed.items()})
    model.load_state_dict(merged, strict=True)


def _grid(n: int, hint: tuple[int, int] | None = None) -> tuple[int, int] | None:
    if hint and hint[0] * hint[1] == n:
        return tuple(hint)  # type: ignore[return-value]
    r = int(round(n ** 0.5))
    return (r, r) if r * r == n else None


def _find_grid(model: nn.Module, key: str) -> tuple[int, int] | None:
    mod = model
    for part in key.split(".")[:-1]:
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    g = getattr(mod, "grid_size", None)
    return tuple(g) if g else None


# -- CLIP-EBC ----------------------------------------------------------------------------------


def _read(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise OfficialCheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc


def ebc_text_features(state: dict[str, torch.Tensor], spec: ModelSpec, source: str) -> torch.Tensor:
    """Encode the spec's prompts with the checkpoint's own frozen text encoder (``text_encoder.*``)."""
    text_state = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    if not text_state:
        raise OfficialCheckpointError(f"{source}: no text_encoder.* weights; cannot encode the prompts")
    text = bb.text_tower(spec)
    load_strict(text, text_state, f"{source} (text_encoder)", resize_pos=False)
    return bb.encode_prompts(text, spec, list(spec.prompts))


def load_official_ebc(path: str | os.PathLike[str], spec: ModelSpec) -> nn.Module:
    """An official CLIP-EBC ``best_*.pth`` (or ``ckpt.pth``) as our ``ClipEBC`` for ``spec``."""
    from engines.models.clip_ebc import ClipEBC

    if spec.family != "clip_ebc":
        raise ValueError(f"load_official_ebc needs a clip_ebc spec, got {spec.family!r}")
    state = _read(path)
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        kind = "a CLIP-Count Lightning checkpoint" if isinstance(state, dict) and "state_dict" in state else "not CLIP-EBC"
        raise OfficialCheckpointError(f"{path}: no image_encoder.* keys ({kind})")
    source = str(path)
    model = ClipEBC(spec)
    feats = ebc_text_features(state, spec, source)
    image_state = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
    load_strict(model, image_state, source, skip=("text_features",))
    if tuple(feats.shape) != tuple(model.text_features.shape):
        raise OfficialCheckpointError(f"{source}: text features {tuple(feats.shape)} vs model "
                                      f"{tuple(model.text_features.shape)}")
    model.text_features.copy_(feats)
    return model.eval()


# -- CLIP-Count --------------------------------------------------------------------------------

_HPARAM_FIELDS = {"decoder_head": "heads", "vpt_width": "num_vpt", "vpt_depth": "vpt_depth",
                  "coop_width": "n_ctx"}


def count_spec_from_hparams(spec: ModelSpec, hparams: dict[str, Any], source: str) -> ModelSpec:
    """Apply the Lightning ``hyper_parameters`` of a CLIP-Count checkpoint to ``spec``."""
    if not hparams:
        return spec
    if hparams.get("use_mixed_fim") is False:
        raise OfficialCheckpointError(f"{source}: trained without the hierarchical patch-text "
                                      "module (use_mixed_fim false); only the released variant is supported")
    if hparams.get("use_vpt") is False or hparams.get("unfreeze_vit") is True:
        raise OfficialCheckpointError(f"{source}: trained with use_vpt={hparams.get('use_vpt')}, "
                                      f"unfreeze_vit={hparams.get('unfreeze_vit')}; only frozen ViT + VPT is supported")
    names = {"b16": "ViT-B-16", "b32": "ViT-B-32", "l14": "ViT-L-14"}
    changes: dict[str, Any] = {}
    for hp, field in _HPARAM_FIELDS.items():
        if hp in hparams:
            changes[field] = int(hparams[hp])
    if hparams.get("use_coop") is False:
        changes["n_ctx"] = 0
    bk = hparams.get("backbone")
    if bk in names and isinstance(spec.backbone, str) and names[bk] != spec.backbone:
        raise OfficialCheckpointError(f"{source}: trained on CLIP {names[bk]} but the spec's backbone "
                                      f"is {spec.backbone}")
    return spec.replace(**changes) if changes else spec


def load_official_count(path: str | os.PathLike[str], spec: ModelSpec | None = None) -> nn.Module:
    """The official CLIP-Count Lightning ``.ckpt`` as our ``ClipCount``.

    The frozen CLIP towers come from ``spec.pretrained`` (default spec: open_clip ViT-B-16
    ``"openai"``, which must be downloadable or cached; or pass a spec with a local file).
    """
    from engines.models.clip_count import ClipCount

    spec = spec or official_count_spec()
    if spec.family != "clip_count":
        raise ValueError(f"load_official_count needs a clip_count spec, got {spec.family!r}")
    ckpt = _read(path)
    source = str(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise OfficialCheckpointError(f"{source}: not a Lightning checkpoint (no 'state_dict')")
    raw = ckpt["state_dict"]
    if not any(k.startswith("model.") for k in raw):
        raise OfficialCheckpointError(f"{source}: no model.* keys (not CLIP-Count)")
    frozen = [k for k in raw if k.startswith(("model.clip.", "model.img_encoder.vit.",
                                              "model.text_encoder.clip_model."))]
    state = {k[len("model."):]: v for k, v in raw.items() if k.startswith("model.") and k not in frozen}
    hp = ckpt.get("hyper_parameters") or {}
    spec = count_spec_from_hparams(spec, dict(hp) if isinstance(hp, dict) else {}, source)
    if not spec.pretrained:
        raise OfficialCheckpointError(f"{source}: the frozen CLIP weights are not in this file; give "
                                      "the spec a pretrained tag ('openai') or local weights file")
    visual, text = bb.load_towers(spec)
    model = ClipCount(spec, visual=visual)
    load_strict(model, state, source, skip=("img_encoder.vit.", "text_embedding"))
    model.set_text_prompt(spec.text_prompt, text=text)
    return model.eval()


def load_official(path: str | os.PathLike[str], spec: ModelSpec) -> nn.Module:
    """Either official format, chosen by the spec's family."""
    if spec.family == "clip_ebc":
        return load_official_ebc(path, spec)
    return load_official_count(path, spec)
