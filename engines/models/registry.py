"""The model registry: model family -> class, model name -> spec factory (as in timm / open_clip).

A family module declares its class with ``@register_family("clip_ebc")`` and its named specs
with ``@register_model("ebc-tiny-rn")``; ``engines.models`` imports every family module, so the
registry is complete as soon as ``engines.models`` is imported. Everything that builds, loads or
exports a model asks the registry (or the model's class attributes) instead of switching on
``spec.family`` or on model names.

A registered class is a :class:`CountingModel`: a pure ``nn.Module`` (no file or network I/O of
its own) that takes float32 RGB in [0, 1], (B, 3, H, W), and returns (B, 1, H/b, W/b) objects per
cell, ``b = model.block_size``. It provides

* ``Class.build(spec)``: the full model (open_clip towers with ``spec.pretrained`` weights or
  random init, text features encoded once);
* ``Class(spec)``: the same structure with a random tower and zero text features, to receive a
  checkpoint's ``state_dict`` (which holds every weight, text features included);
* ``Class.check_spec(spec)``: the family's own checks of a spec (``ModelSpec`` calls it);
* the class attributes ``text_prompted`` and ``whole_image`` (see :class:`CountingModel`).

Example::

    @register_family("clip_ebc")
    class ClipEBC(CountingModel): ...

    @register_model("ebc-tiny-rn")
    def _ebc_tiny_rn() -> ModelSpec: ...

    list_models()                         # ['count-tiny', 'ebc-tiny-rn', 'ebc-tiny-vit']
    model = create_model("ebc-tiny-rn")   # or create_model(spec), build_empty(spec)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import nn

if TYPE_CHECKING:
    from engines.models.spec import ModelSpec

__all__ = ["CountingModel", "build_empty", "create_model", "list_families", "list_models",
           "model_class", "register_family", "register_model", "small_spec"]


class CountingModel(nn.Module):
    """Base class of every registered model family.

    Class attributes the rest of ``engines`` reads instead of testing the family's name:
      family: the registered family name (set by :func:`register_family`).
      title: the family's name for people, in messages (``"CLIP-EBC"``; default: ``family``).
      text_prompted: the counted class is a text prompt built into the model
        (``spec.text_prompt``, switched with ``set_text_prompt``): one engine per prompt.
      whole_image: one forward over a whole frame of any (stride-aligned) size is valid, not
        only fixed windows (``engines.predict``'s ``whole=True``).
    """

    family: ClassVar[str] = ""
    title: ClassVar[str] = ""
    text_prompted: ClassVar[bool] = False
    whole_image: ClassVar[bool] = False
    spec: ModelSpec
    block_size: int

    @classmethod
    def build(cls, spec: ModelSpec) -> CountingModel:
        """The full model of ``spec`` (pretrained or random towers, text features encoded)."""
        raise NotImplementedError(f"{cls.__name__} does not implement build(spec)")

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> dict[str, Any]:
        """Check the family's own fields of ``spec`` (a ValueError saying what is wrong) and
        return the derived fields to fill in; called by ``ModelSpec`` on every construction."""
        return {}

    def set_text_prompt(self, prompt: str) -> None:
        """Switch the counted class; only ``text_prompted`` families can."""
        raise ValueError(f"{type(self).__name__} counts a fixed class; it has no text prompt to "
                         f"switch to {prompt!r}")


_FAMILIES: dict[str, type[CountingModel]] = {}
_MODELS: dict[str, Callable[[], ModelSpec]] = {}

M = TypeVar("M", bound=type[CountingModel])
F = TypeVar("F", bound=Callable[[], "ModelSpec"])


def register_family(name: str) -> Callable[[M], M]:
    """Class decorator: ``name`` (the value of ``ModelSpec.family``) is built by this class."""

    def add(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, CountingModel)):
            raise TypeError(f"model family {name!r}: {cls!r} is not a CountingModel subclass")
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered "
                             f"({_FAMILIES[name].__qualname__})")
        cls.family = name
        cls.title = cls.__dict__.get("title") or name
        _FAMILIES[name] = cls
        return cls

    return add


def register_model(name: str) -> Callable[[F], F]:
    """Function decorator: ``name`` is the spec the zero-argument factory returns."""

    def add(factory: F) -> F:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return add


def list_families() -> list[str]:
    """The registered family names, sorted."""
    return sorted(_FAMILIES)


def list_models(pattern: str | None = None) -> list[str]:
    """The registered model (spec) names, sorted; ``pattern`` filters by shell wildcard."""
    names = sorted(_MODELS)
    return fnmatch.filter(names, pattern) if pattern else names


def model_class(family: str) -> type[CountingModel]:
    """The class registered for ``family``; a ValueError naming the known families otherwise."""
    try:
        return _FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; registered: "
                         f"{', '.join(list_families())}") from None


def small_spec(name: str) -> ModelSpec:
    """The spec registered as ``name`` (the tiny random-init configs for tests and CPU runs:
    ``ebc-tiny-rn``, ``ebc-tiny-vit``, ``count-tiny``)."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown small model {name!r}; registered: "
                         f"{', '.join(list_models())}") from None
    return factory()


def create_model(spec: ModelSpec | str) -> CountingModel:
    """Build the model of ``spec`` (or of the registered name): backbone weights from
    ``spec.pretrained`` (open_clip tag or local file) or random init; text features encoded once
    by the frozen text tower."""
    if isinstance(spec, str):
        spec = small_spec(spec)
    return model_class(spec.family).build(spec)


def build_empty(spec: ModelSpec) -> CountingModel:
    """The model's structure with random weights and no text tower, for ``load_state_dict``."""
    return model_class(spec.family)(spec)
