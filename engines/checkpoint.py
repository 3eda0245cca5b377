"""Our self-describing model checkpoints: one file = spec + weights + training metadata.

The file is a ``torch.save`` dict ``{"format": "crowdstream-model", "version": 1, "spec": {...},
"state_dict": {...}, "metadata": {...}}`` holding only plain data and tensors, so it loads with
``weights_only=True``. The text features are part of the state dict, so loading needs neither a
text tower nor pretrained backbone weights.

Example::

    save_checkpoint("runs/x/model.pt", model, {"epoch": 12, "val_mae": 3.1})
    model, meta = load_checkpoint("runs/x/model.pt")
    file_hash("runs/x/model.pt")     # sha256 hex, the engine cache key
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.models import build_empty
from engines.models.spec import ModelSpec

FORMAT = "crowdstream-model"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (which must carry ``model.spec``) and ``metadata`` to ``path`` atomically.

    ``metadata`` must be plain data (numbers, strings, lists, dicts) - it is stored as-is.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{type(model).__name__} has no ModelSpec at .spec; cannot describe it")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "state_dict": state,
               "metadata": dict(metadata or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # readers never see a half-written file
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw payload of one of our checkpoints, validated (clear error for other files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-torch files
        raise ValueError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and any(str(k).startswith("image_encoder.") for k in payload):
            hint = " (looks like an official CLIP-EBC best_*.pth: use engines.models.official)"
        elif isinstance(payload, dict) and "pytorch-lightning_version" in payload:
            hint = " (looks like a Lightning .ckpt, e.g. CLIP-Count: use engines.models.official)"
        raise ValueError(f"{path}: not a crowdstream model checkpoint{hint}")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} not supported "
                         f"(expected {VERSION})")
    for key in ("spec", "state_dict"):
        if key not in payload:
            raise ValueError(f"{path}: checkpoint has no {key!r}")
    return payload


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model in eval mode, metadata)``.

    Loading is strict: missing or unexpected weights are an error naming them.
    """
    payload = read_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid model spec: {exc}") from exc
    model = build_empty(spec)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches, all named
        raise ValueError(f"{path}: weights do not match the stored spec: {exc}") from exc
    model.to(device).eval()
    return model, dict(payload.get("metadata") or {})


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the file's bytes (identifies a checkpoint for engine caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
