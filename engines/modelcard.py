"""Model cards: what a checkpoint is for, how it was made and how well it counts.

A card travels in every checkpoint's metadata (``metadata["card"]``, written by
``engines.checkpoint.save_checkpoint(..., card=...)``): what the model was trained on, the recipe
and the command that trained (or converted) it, the measured figures with the command that gives
each of them, the scenes it is meant for (and those it is not), and its licence and attribution.
Checkpoints written before cards existed simply have none (:func:`card_of` returns ``None``).

Example::

    card = ModelCard(name="mall-demo-rn", trained_on=["Mall frames 1-700"],
                     scenes=["indoor mall, elevated camera"], licence="research use",
                     figures=[Figure("Mall frames 701-800", mae=2.94, rmse=3.72,
                                     command="crowdstream eval m.pt --data ... --select 701-800")])
    save_checkpoint("m.pt", model, {"epoch": 27}, card=card)
    print(format_card(card_of("m.pt")))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured (or published) accuracy figure and how to get it again.

    ``source`` says who measured it: ``"measured here"`` (``command`` reproduces it) or where a
    published figure comes from (``"authors' README"``).
    """

    dataset: str
    mae: float | None = None
    rmse: float | None = None
    images: int | None = None
    command: str = ""
    source: str = "measured here"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        return cls(**_known(cls, data, "figure"))

    def line(self) -> str:
        """``"Mall frames 701-800: MAE 2.94, RMSE 3.72 (measured here)"``."""
        parts = [f"MAE {self.mae:g}" if self.mae is not None else "",
                 f"RMSE {self.rmse:g}" if self.rmse is not None else "",
                 f"{self.images} images" if self.images else ""]
        nums = ", ".join(p for p in parts if p) or "no figure"
        note = f"; {self.note}" if self.note else ""
        return f"{self.dataset}: {nums} ({self.source}{note})"


@dataclass(frozen=True)
class ModelCard:
    """The card of one model. Every field is plain data; lists keep their order.

    ``name`` identifies the model in logs; ``summary`` is one sentence; ``trained_on`` names the
    data (sets, splits, frames); ``recipe`` describes the training (or conversion) settings and
    ``command`` is the command that made the file; ``figures`` are the measured numbers;
    ``scenes`` the scenes it is meant for, ``not_for`` where it is known to fail; ``licence`` and
    ``attribution`` say under which terms and whose work it is; ``source`` where the weights
    came from (a URL for pulled models). ``extra`` keeps keys written by newer versions.
    """

    name: str
    summary: str = ""
    trained_on: tuple[str, ...] = ()
    recipe: str = ""
    command: str = ""
    figures: tuple[Figure, ...] = ()
    scenes: tuple[str, ...] = ()
    not_for: tuple[str, ...] = ()
    licence: str = ""
    attribution: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a model card needs a name")
        for key in ("trained_on", "scenes", "not_for"):
            value = getattr(self, key)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, key, tuple(str(v) for v in value))
        figs = tuple(f if isinstance(f, Figure) else Figure.from_dict(f) for f in self.figures)
        object.__setattr__(self, "figures", figs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (lists, not tuples)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "figures":
                v = [fig.to_dict() for fig in v]
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; keys this version does not know go to ``extra``."""
        if not isinstance(data, dict):
            raise ValueError(f"a model card must be a mapping, got {type(data).__name__}")
        if not data.get("name"):
            raise ValueError("a model card needs a name")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        extra = dict(kw.pop("extra", None) or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**kw, extra=extra)

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)


def _known(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"a {what} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} keys: {unknown} (known: {sorted(names)})")
    return dict(data)


def card_from_metadata(metadata: dict[str, Any] | None) -> ModelCard | None:
    """The card stored in a checkpoint's metadata, or ``None`` for files without one."""
    raw = (metadata or {}).get("card")
    return ModelCard.from_dict(raw) if raw else None


def card_of(path: str | os.PathLike[str]) -> ModelCard | None:
    """The card of a checkpoint (``.pt``) or of the checkpoint an engine file was built from
    (read from its sidecar); ``None`` when the file has none. Weights are not read."""
    p = Path(path)
    if p.suffix.lower() in (".onnx", ".plan", ".engine"):
        from engines.backends.sidecar import read_sidecar

        meta = read_sidecar(p).get("checkpoint_metadata") or {}
        return card_from_metadata(meta if isinstance(meta, dict) else {})
    from engines.checkpoint import read_metadata

    return card_from_metadata(read_metadata(p))


def format_card(card: ModelCard | None) -> str:
    """The card as indented text for a terminal (``"no card"`` when there is none)."""
    if card is None:
        return "card: no card (this checkpoint was written without one)"
    lines = [f"card: {card.name}"]
    if card.summary:
        lines.append(f"  summary: {card.summary}")

    def block(title: str, items: tuple[str, ...] | list[str]) -> None:
        if items:
            lines.append(f"  {title}:")
            lines.extend(f"    - {i}" for i in items)

    block("trained on", card.trained_on)
    if card.recipe:
        lines.append(f"  recipe: {card.recipe}")
    if card.command:
        lines.append(f"  command: {card.command}")
    if card.figures:
        lines.append("  figures:")
        for fig in card.figures:
            lines.append(f"    - {fig.line()}")
            if fig.command:
                lines.append(f"      reproduce: {fig.command}")
    block("meant for", card.scenes)
    block("not for", card.not_for)
    if card.licence:
        lines.append(f"  licence: {card.licence}")
    if card.attribution:
        lines.append(f"  attribution: {card.attribution}")
    if card.source:
        lines.append(f"  source: {card.source}")
    return "\n".join(lines)


def scenes_line(card: ModelCard | None) -> str:
    """One short line for logs: the intended scenes, or ``"no card"``."""
    if card is None:
        return "no card"
    return "; ".join(card.scenes) or "not stated in the card"
