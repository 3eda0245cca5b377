"""CLIP-Count on the tiny random-init config: shapes, scale, prompts, VPT indexing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.checkpoint import load_checkpoint, save_checkpoint
from engines.models import build_empty, create_model, small_spec
from engines.models.clip_count import sincos_1d

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(small_spec("count-tiny")).eval()


def test_shapes_scale_and_range(model: torch.nn.Module) -> None:
    assert model.block_size == 1 and model.spec.window == (128, 128)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        raw = model.forward_density(x)
        out = model(x)
    assert out.shape == (2, 1, 128, 128) and out.dtype == torch.float32
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0  # sigmoid
    torch.testing.assert_close(out, raw / 60.0)
    assert float(out[0].std()) > 0  # the map varies over the window
    with torch.no_grad():  # other window sizes: the encoder input is resized, output follows x
        assert model(torch.rand(1, 3, 96, 160)).shape == (1, 1, 96, 160)


def test_frozen_vit_and_trainable_head(model: torch.nn.Module) -> None:
    assert not any(p.requires_grad for p in model.img_encoder.vit.parameters())
    assert model.img_encoder.visual_prompt.requires_grad
    assert model.img_encoder.visual_prompt.shape == (2, 4, 64)  # depth x tokens x width
    assert not model.patch_emb_pos_embed.requires_grad
    torch.testing.assert_close(model.patch_emb_pos_embed[0], sincos_1d(128, 16))


def test_prompts_change_what_is_counted(model: torch.nn.Module) -> None:
    """Released-model semantics: a one-token class name does not reach the text feature."""
    x = torch.rand(1, 3, 128, 128)
    base = model.text_embedding.clone()
    model.set_text_prompt("cars")
    same = model.text_embedding.clone()
    model.set_text_prompt("traffic cones on a road")
    multi = model.text_embedding.clone()
    with torch.no_grad():
        y_multi = model(x)
    model.set_text_prompt("people")
    torch.testing.assert_close(same, base)  # the documented quirk of the official encoder
    assert not torch.allclose(multi, base)
    with torch.no_grad():
        assert not torch.allclose(model(x), y_multi)
    assert model.spec.text_prompt == "people"
    with pytest.raises(ValueError, match="non-empty"):
        model.set_text_prompt("  ")


def test_eot_fix_makes_single_words_differ() -> None:
    spec = small_spec("count-tiny").replace(coop_eot_fix=True)
    m = create_model(spec).eval()
    people = m.text_embedding.clone()
    m.set_text_prompt("cars")
    assert not torch.allclose(people, m.text_embedding)


def test_vpt_depth_is_validated() -> None:
    with pytest.raises(ValueError, match="vpt_depth"):
        build_empty(small_spec("count-tiny").replace(vpt_depth=3))
    with pytest.raises(ValueError, match="vpt_depth"):
        build_empty(small_spec("count-tiny").replace(vpt_depth=1))


def test_checkpoint_round_trip_keeps_prompt(model: torch.nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "count.pt", model, {"note": "tiny"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"note": "tiny"} and loaded.spec == model.spec
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # a new prompt on the loaded model (random-init: the seeded text tower is rebuilt)
    loaded.set_text_prompt("traffic cones on a road")
    model.set_text_prompt("traffic cones on a road")
    torch.testing.assert_close(loaded.text_embedding, model.text_embedding)
    model.set_text_prompt("people")


def test_text_path_without_context_matches_open_clip() -> None:
    """With no learnable context, our CoOp text path is open_clip's text encoder (unnormalised)."""
    from engines.models import backbone as bb
    from engines.models.clip_count import encode_class_prompt

    spec = small_spec("count-tiny")
    text = bb.text_tower(spec)
    ours = encode_class_prompt(text, spec, "people", None)
    with torch.no_grad():
        ref = text(bb.tokenizer_for(spec)(["people"]))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
