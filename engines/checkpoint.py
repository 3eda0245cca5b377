"""Our self-describing model checkpoints: one file = spec + weights + training metadata.

The file is a ``torch.save`` dict ``{"format": "crowdstream-model", "version": 1, "spec": {...},
"state_dict": {...}, "metadata": {...}}`` holding only plain data and tensors, so it loads with
``weights_only=True``. The text features are part of the state dict, so loading needs neither a
text tower nor pretrained backbone weights.

The metadata may hold a model card (``metadata["card"]``, see ``engines.modelcard``): pass
``card=`` to :func:`save_checkpoint`. Files written before cards existed load as before.

Example::

    save_checkpoint("runs/x/model.pt", model, {"epoch": 12, "val_mae": 3.1}, card=card)
    model, meta = load_checkpoint("runs/x/model.pt")
    read_metadata("runs/x/model.pt")  # metadata only (weights memory-mapped, not read)
    file_hash("runs/x/model.pt")     # sha256 hex, the engine cache key
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engines.models import build_empty
from engines.models.spec import ModelSpec

if TYPE_CHECKING:
    from engines.modelcard import ModelCard

FORMAT = "crowdstream-model"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module,
                    metadata: dict[str, Any] | None = None, *,
                    card: ModelCard | None = None) -> Path:
    """Write ``model`` (which must carry ``model.spec``) and ``metadata`` to ``path`` atomically.

    ``metadata`` must be plain data (numbers, strings, lists, dicts) - it is stored as-is.
    ``card`` (a ``ModelCard``) is stored as ``metadata["card"]``; a card already in ``metadata``
    is checked to be a valid card.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{type(model).__name__} has no ModelSpec at .spec; cannot describe it")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = _with_card(metadata, card)
    return _write(Path(path), {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(),
                               "state_dict": state, "metadata": meta})


def _with_card(metadata: dict[str, Any] | None, card: ModelCard | None) -> dict[str, Any]:
    from engines.modelcard import ModelCard

    meta = dict(metadata or {})
    if card is not None:
        meta["card"] = card.to_dict()
    elif meta.get("card") is not None:
        meta["card"] = ModelCard.from_dict(meta["card"]).to_dict()  # validates
    return meta


def _write(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # readers never see a half-written file
    return path


def _load_error(exc: BaseException) -> str:
    """torch.load's reason in one line: its weights-only refusals are a page of advice around
    the one line that says what was wrong with the file."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().split("\n\n", 1)[0]
        return "unpickling refused: " + " ".join(reason.split())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def read_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """The raw payload of one of our checkpoints, validated (clear error for other files).

    ``mmap=True`` maps the tensors instead of reading them (cheap when only the spec or
    metadata is wanted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # pickle errors, truncated files, non-torch files
        raise ValueError(f"{path}: not a readable torch checkpoint ({_load_error(exc)})") \
            from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and any(str(k).startswith("image_encoder.") for k in payload):
            hint = (" (looks like an official CLIP-EBC best_*.pth: convert it with "
                    "`crowdstream models convert ebc`)")
        elif isinstance(payload, dict) and "pytorch-lightning_version" in payload:
            hint = (" (looks like a Lightning .ckpt, e.g. CLIP-Count: convert it with "
                    "`crowdstream models convert count`)")
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


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of one of our checkpoints (the card included), without reading the weights."""
    return dict(read_checkpoint(path, mmap=True).get("metadata") or {})


def state_dict_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes (in name order): equal for
    bit-identical weights, whatever else the file holds."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def rewrite_metadata(path: str | os.PathLike[str], metadata: dict[str, Any],
                     out: str | os.PathLike[str] | None = None) -> str:
    """Replace a checkpoint's metadata (e.g. to add a card), keeping spec and weights as they are.

    Writes to ``out`` (default: in place, atomically) and returns the weights' hash, checked to
    be the same before and after.
    """
    payload = read_checkpoint(path)
    before = state_dict_hash(payload["state_dict"])
    payload["metadata"] = _with_card(metadata, None)
    dst = _write(Path(out) if out else Path(path), payload)
    after = state_dict_hash(read_checkpoint(dst)["state_dict"])
    if after != before:  # torch.save stores tensors bit for bit; this would be a torch bug
        raise RuntimeError(f"{dst}: weights changed while rewriting the metadata")
    return after


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the file's bytes (identifies a checkpoint for engine caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
