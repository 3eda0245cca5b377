"""The model registry: families and named specs, and that a newly registered family goes through
checkpoints, export and the engines with no switch to extend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engines.backends import load_engine
from engines.checkpoint import load_checkpoint, save_checkpoint
from engines.export import relative_l2
from engines.models import (
    CountingModel,
    ModelSpec,
    build_empty,
    create_model,
    list_families,
    list_models,
    model_class,
    register_family,
    register_model,
    registry,
    small_spec,
)
from engines.models.clip_count import ClipCount
from engines.models.clip_ebc import ClipEBC

torch.set_num_threads(1)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test are forgotten after it."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


def _register_blockmean() -> type[CountingModel]:
    @register_family("test_blockmean")
    class BlockMean(CountingModel):
        """A tiny learnable per-block counter: one strided conv, no open_clip."""

        def __init__(self, spec: ModelSpec) -> None:
            super().__init__()
            self.spec = spec
            self.block_size = spec.block_size
            self.conv = nn.Conv2d(3, 1, spec.block_size, stride=spec.block_size)

        @classmethod
        def check_spec(cls, spec: ModelSpec) -> dict[str, object]:
            if spec.extra.get("gain", 1.0) <= 0:
                raise ValueError("extra.gain must be > 0")
            return {"name": spec.name or "blockmean"}

        @classmethod
        def build(cls, spec: ModelSpec) -> BlockMean:
            return cls(spec)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).relu() * float(self.spec.extra.get("gain", 1.0))

    @register_model("test-blockmean")
    def _spec() -> ModelSpec:
        return ModelSpec(family="test_blockmean", backbone="none", window=(64, 96), block_size=8)

    return BlockMean


def test_builtin_families_and_names() -> None:
    assert list_families() == ["clip_count", "clip_ebc"]
    assert model_class("clip_ebc") is ClipEBC and model_class("clip_count") is ClipCount
    assert ClipEBC.family == "clip_ebc" and ClipCount.family == "clip_count"
    assert list_models() == ["count-tiny", "ebc-tiny-rn", "ebc-tiny-vit"]
    assert list_models("ebc-*") == ["ebc-tiny-rn", "ebc-tiny-vit"]
    # what export and predict ask of a family, instead of testing its name
    assert ClipCount.text_prompted and not ClipEBC.text_prompted
    assert ClipEBC.whole_image and not ClipCount.whole_image


def test_unknown_family_and_name_say_what_is_registered() -> None:
    with pytest.raises(ValueError, match="unknown model family 'yolo'; registered: clip_count, "
                                         "clip_ebc"):
        model_class("yolo")
    with pytest.raises(ValueError, match="registered: count-tiny, ebc-tiny-rn, ebc-tiny-vit"):
        small_spec("huge")
    with pytest.raises(ValueError, match="counts a fixed class"):
        build_empty(small_spec("ebc-tiny-rn")).set_text_prompt("cars")


def test_create_by_name_equals_create_by_spec() -> None:
    torch.manual_seed(3)
    by_name = create_model("ebc-tiny-rn")
    torch.manual_seed(3)
    by_spec = create_model(small_spec("ebc-tiny-rn"))
    assert type(by_name) is ClipEBC and by_name.spec == by_spec.spec
    a, b = by_name.state_dict(), by_spec.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    empty = build_empty(by_name.spec)  # same structure, ready for the weights
    empty.load_state_dict(a, strict=True)


def test_registration_errors(scratch_registry: None) -> None:
    with pytest.raises(TypeError, match="not a CountingModel"):
        register_family("plain")(nn.Conv2d)
    with pytest.raises(ValueError, match="'clip_ebc' is already registered"):

        @register_family("clip_ebc")
        class Other(CountingModel):
            pass

    with pytest.raises(ValueError, match="'ebc-tiny-rn' is already registered"):
        register_model("ebc-tiny-rn")(lambda: small_spec("count-tiny"))


def test_a_new_family_runs_through_checkpoint_export_and_engines(
        scratch_registry: None, tmp_path: Path) -> None:
    cls = _register_blockmean()
    assert "test_blockmean" in list_families() and "test-blockmean" in list_models()
    spec = small_spec("test-blockmean")
    assert spec.name == "blockmean"  # filled in by the family's check_spec
    with pytest.raises(ValueError, match="extra.gain must be > 0"):
        spec.replace(extra={"gain": -1.0})
    torch.manual_seed(0)
    model = create_model(spec)
    assert isinstance(model, cls) and model.family == model.title == "test_blockmean"

    path = save_checkpoint(tmp_path / "blockmean.pt", model, {"note": "registry test"})
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is cls and meta == {"note": "registry test"}

    x = np.random.default_rng(0).random((3, 3, 64, 96), dtype=np.float32)
    eager = load_engine(str(path), backend="torch", max_batch=4, threads=1)
    ort = load_engine(str(path), backend="onnx", max_batch=4, threads=1,
                      cache_dir=str(tmp_path / "engines"), text_prompt="cars")
    a, b = eager.run(x), ort.run(x)
    assert a.shape == (3, 1, 8, 12) and float(a.std()) > 0
    assert relative_l2(b, a) <= 1e-5
    # not text-prompted: no prompt in the engine, and a requested prompt changes nothing
    assert ort.description["text_prompt"] is None and eager.description["text_prompt"] is None
