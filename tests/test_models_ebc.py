"""CLIP-EBC on tiny random-init configs: spec round-trip, bins/prompts, shapes, counting head."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.models import ModelSpec, build_empty, create_model, small_spec
from engines.models.bins import (
    anchors_from_counts,
    bin_index,
    bin_labels,
    fine_bins,
    make_prompts,
    official_bins,
)

torch.set_num_threads(1)

WORD = ["There is no person.", "There is one person.", "There are two people.",
        "There are three people.", "There are more than four people."]
NUMBER = ["There is 0 person.", "There is 1 person.", "There are 2 people.",
          "There are 3 people.", "There are more than 4 people."]


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {n: create_model(small_spec(n)).eval() for n in ("ebc-tiny-rn", "ebc-tiny-vit")}


@pytest.mark.parametrize("dataset", ["sha", "shb", "nwpu", "qnrf", "jhu"])
def test_official_prompts_match_documented_strings(dataset: str) -> None:
    bins, anchors = official_bins(dataset, 4)
    assert make_prompts(bins, "word") == WORD
    assert make_prompts(bins, "number") == NUMBER
    assert anchors[:4] == [0.0, 1.0, 2.0, 3.0] and 4.2 < anchors[4] < 4.42


def test_official_tables() -> None:
    assert official_bins("sha", 4)[1][-1] == pytest.approx(4.29992)
    assert official_bins("jhu", 2)[1] == pytest.approx([0.0, 1.0, 2.18589])
    bins, anchors = official_bins("qnrf", 11)
    assert len(bins) == 12 and bins[-1] == (11.0, None) and anchors[-1] == 11.0
    with pytest.raises(ValueError, match="truncation 11"):
        official_bins("sha", 11)
    with pytest.raises(ValueError, match="no official block-8 table"):
        official_bins("sha", 5)


def test_anchors_and_labels_from_block_counts() -> None:
    bins = fine_bins(2)  # {0}, {1}, [2, inf)
    counts = np.array([0, 0, 1, 2, 4, 3, 1.5])
    np.testing.assert_array_equal(bin_index(counts, bins), [0, 0, 1, 2, 2, 2, 1])
    assert anchors_from_counts(counts, bins) == pytest.approx([0.0, 1.25, 3.0])
    labels = bin_labels(torch.tensor(counts, dtype=torch.float32), bins)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 1, 2, 2, 2, 1]
    # empty bin keeps its lower bound
    assert anchors_from_counts(np.zeros(5), bins) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("name", ["ebc-tiny-rn", "ebc-tiny-vit", "count-tiny"])
def test_spec_round_trip(name: str) -> None:
    spec = small_spec(name)
    data = spec.to_dict()
    import json

    again = ModelSpec.from_dict(json.loads(json.dumps(data)))
    assert again == spec


def test_spec_errors_are_specific() -> None:
    data = small_spec("ebc-tiny-rn").to_dict()
    with pytest.raises(ValueError, match="unknown model spec keys: \\['colour'\\]"):
        ModelSpec.from_dict({**data, "colour": 1})
    with pytest.raises(ValueError, match="5 bins but 2 anchors"):
        ModelSpec.from_dict({**data, "anchors": [0, 1]})
    with pytest.raises(ValueError, match="not a multiple of block_size"):
        ModelSpec.from_dict({**data, "window": [220, 224]})
    with pytest.raises(ValueError, match="family"):
        ModelSpec.from_dict({**data, "family": "yolo"})
    with pytest.raises(ValueError, match="unknown small model"):
        small_spec("huge")


def test_with_bins_regenerates_prompts() -> None:
    spec = small_spec("ebc-tiny-rn").with_bins(fine_bins(2), [0.0, 1.0, 2.3], "number")
    assert spec.prompts == ("There is 0 person.", "There is 1 person.", "There are more than 2 people.")


@pytest.mark.parametrize("name", ["ebc-tiny-rn", "ebc-tiny-vit"])
def test_shapes_dtypes_and_head(name: str, tiny_models: dict[str, torch.nn.Module]) -> None:
    model = tiny_models[name]
    spec = model.spec
    assert model.block_size == 8 and spec.window == (224, 224)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        logits, density = model.forward_train(x)
        out = model(x)
    assert logits.shape == (2, 5, 28, 28) and density.shape == (2, 1, 28, 28)
    assert out.dtype == torch.float32 and torch.equal(out, density)
    # the counting head: softmax over bins, expectation of the anchors
    anchors = torch.tensor(spec.anchors).view(1, 5, 1, 1)
    expect = (logits.softmax(1) * anchors).sum(1, keepdim=True)
    torch.testing.assert_close(density, expect)
    assert float(density.min()) >= 0.0 and float(density.max()) <= max(spec.anchors)
    assert float(density.std()) > 1e-3, "random-init output is degenerate (constant map)"
    # text features: L2-normalised buffer, one row per prompt; initial scale ln(1/0.07)
    tf = model.text_features
    assert tf.shape == (5, 64)
    torch.testing.assert_close(tf.norm(dim=1), torch.ones(5))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert "text_features" in model.state_dict()
    # other window sizes (multiples of 16) work; odd ones are refused clearly
    with torch.no_grad():
        assert model(torch.rand(1, 3, 160, 96)).shape == (1, 1, 20, 12)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.rand(1, 3, 168, 96))


def test_normalisation_is_inside_the_model(tiny_models: dict[str, torch.nn.Module]) -> None:
    model = tiny_models["ebc-tiny-rn"]
    x = torch.rand(1, 3, 64, 64)
    other = build_empty(model.spec.replace(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(model(x), other(x))
        # same weights, normalisation (x-0.5)/0.5 == model's own normalisation of a remapped input
        mean, std = torch.tensor(model.spec.mean).view(1, 3, 1, 1), torch.tensor(model.spec.std).view(1, 3, 1, 1)
        x2 = ((x - mean) / std) * 0.5 + 0.5
        torch.testing.assert_close(other(x2), model(x), rtol=1e-4, atol=1e-5)


def test_resnet_structure(tiny_models: dict[str, torch.nn.Module]) -> None:
    model = tiny_models["ebc-tiny-rn"]
    keys = model.state_dict().keys()
    assert not any(k.startswith("image_encoder.attnpool") for k in keys)
    assert "image_decoder.0.conv3.weight" in keys and "projection.bias" in keys
    # layer4 runs at stride 1: features at /16 for a 224 input
    with torch.no_grad():
        f = model._resnet_features(torch.rand(1, 3, 224, 224))
    assert f.shape[-2:] == (14, 14)
    # all parameters trainable (the official ResNet models are fully fine-tuned)
    assert all(p.requires_grad for p in model.image_encoder.parameters())


def test_vit_vpt_structure(tiny_models: dict[str, torch.nn.Module]) -> None:
    model = tiny_models["ebc-tiny-vit"]
    keys = set(model.state_dict())
    assert {"vpt_0", "vpt_1"} <= keys and "vpt_2" not in keys
    assert "image_encoder.proj" not in keys
    assert "image_decoder.0.conv2.weight" in keys and "image_decoder.0.conv3.weight" not in keys
    assert model.vpt_0.shape == (4, 64)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    # the prompts matter: changing them changes the output
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x).clone()
        saved = model.vpt_1.detach().clone()
        model.vpt_1.add_(torch.randn_like(saved))  # a constant shift is removed by LayerNorm
        after = model(x)
        model.vpt_1.copy_(saved)
    assert not torch.allclose(before, after)


def test_shallow_vpt_has_one_prompt_set() -> None:
    spec = small_spec("ebc-tiny-vit").replace(deep_vpt=False, num_vpt=3)
    model = build_empty(spec).eval()
    assert [k for k in model.state_dict() if k.startswith("vpt_")] == ["vpt_0"]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1, 28, 28)


def test_vit_patch_features_match_open_clip_tokens() -> None:
    """Without prompts, our ViT feature path equals open_clip's own tokens after ln_post."""
    spec = small_spec("ebc-tiny-vit").replace(num_vpt=0)
    model = build_empty(spec).eval()
    v = model.image_encoder
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        ours = model._vit_features(x)
        v.output_tokens = True
        _, tokens = v(x)
        v.output_tokens = False
    ref = tokens.transpose(1, 2).reshape(2, 64, 14, 14)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_timm_backbone_through_the_same_factory(tmp_path: Path) -> None:
    """EBC-ZIP-style backbones (open_clip towers on timm trunks, e.g. ConvNeXt) build and count."""
    from engines.checkpoint import load_checkpoint, save_checkpoint

    base = small_spec("ebc-tiny-rn")
    backbone = {"name": "tiny-convnext", "embed_dim": 64,
                "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False,
                               "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                "text_cfg": dict(base.backbone["text_cfg"])}
    spec = base.replace(backbone=backbone, decoder_channels=(64,), name="ebc-tiny-convnext")
    model = create_model(spec).eval()
    from engines.models.clip_ebc import BasicBlock

    assert model.encoder_stride == 32 and isinstance(model.image_decoder[0], BasicBlock)
    assert not any(k.startswith("image_encoder.head") for k in model.state_dict())
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        logits, density = model.forward_train(x)
    assert logits.shape == (1, 5, 28, 28) and float(density.std()) > 0
    path = save_checkpoint(tmp_path / "cnx.pt", model, {})
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), density, rtol=0, atol=0)
    with pytest.raises(ValueError, match="visual prompts need a ViT"):
        build_empty(spec.replace(num_vpt=4))
