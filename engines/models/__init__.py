"""Counting models (CLIP-EBC, CLIP-Count) built from a :class:`ModelSpec` through one registry.

``create_model(spec)`` builds the model a spec describes (open_clip weights from
``spec.pretrained``, or random init); ``build_empty(spec)`` the same structure for loading a
checkpoint's weights; ``small_spec(name)`` gives the registered tiny random-init configs for tests
and CPU experiments (``list_models()`` names them). The family -> class and name -> spec tables
live in :mod:`engines.models.registry`; importing this package registers every family. Every model
takes float32 RGB in [0, 1], (B, 3, H, W), normalises inside and returns (B, 1, H/b, W/b) objects
per cell, ``b = model.block_size``.

Example::

    from engines.models import create_model, small_spec
    model = create_model(small_spec("ebc-tiny-rn")).eval()
    counts = model(torch.rand(1, 3, 224, 224))      # (1, 1, 28, 28)
    print(float(counts.sum()))
"""

from __future__ import annotations

# Importing the family modules registers their classes and named specs (as timm's package does).
from engines.models import clip_count, clip_ebc  # noqa: F401
from engines.models.registry import (
    CountingModel,
    build_empty,
    create_model,
    list_families,
    list_models,
    model_class,
    register_family,
    register_model,
    small_spec,
)
from engines.models.spec import ModelSpec

__all__ = ["CountingModel", "ModelSpec", "build_empty", "create_model", "list_families",
           "list_models", "model_class", "register_family", "register_model", "small_spec"]
