"""Official checkpoint layouts (CLIP-EBC best_*.pth, CLIP-Count Lightning .ckpt): strict loading.

State dicts are written here from the documented key patterns (OpenAI CLIP names; see
../shared/reference/models.md), independently of our modules, filled with random tensors; loading
must put every tensor in place. Small widths keep it fast; the full-size layouts are checked for
names and shapes on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.checkpoint import load_checkpoint, save_checkpoint
from engines.models import backbone as bb
from engines.models import small_spec
from engines.models.clip_count import ClipCount, encode_class_prompt
from engines.models.clip_ebc import ClipEBC
from engines.models.official import (
    OfficialCheckpointError,
    count_spec_from_hparams,
    load_official_count,
    load_official_ebc,
    load_strict,
    official_count_spec,
    official_ebc_spec,
)

torch.set_num_threads(1)

Shapes = dict[str, tuple[int, ...]]


def _bn(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _ln(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _resblocks(prefix: str, width: int, layers: int) -> Shapes:
    out: Shapes = {}
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        out.update({f"{p}.attn.in_proj_weight": (3 * width, width), f"{p}.attn.in_proj_bias": (3 * width,),
                    f"{p}.attn.out_proj.weight": (width, width), f"{p}.attn.out_proj.bias": (width,),
                    f"{p}.mlp.c_fc.weight": (4 * width, width), f"{p}.mlp.c_fc.bias": (4 * width,),
                    f"{p}.mlp.c_proj.weight": (width, 4 * width), f"{p}.mlp.c_proj.bias": (width,)})
        out.update(_ln(f"{p}.ln_1", width))
        out.update(_ln(f"{p}.ln_2", width))
    return out


def openai_resnet(prefix: str, layers: list[int], width: int) -> Shapes:
    """OpenAI ModifiedResNet keys without the attention pool."""
    h = width // 2
    out: Shapes = {f"{prefix}.conv1.weight": (h, 3, 3, 3), f"{prefix}.conv2.weight": (h, h, 3, 3),
                   f"{prefix}.conv3.weight": (width, h, 3, 3)}
    out.update(_bn(f"{prefix}.bn1", h) | _bn(f"{prefix}.bn2", h) | _bn(f"{prefix}.bn3", width))
    inplanes = width
    for li, n in enumerate(layers):
        planes = width * 2 ** li
        for j in range(n):
            p = f"{prefix}.layer{li + 1}.{j}"
            out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            out.update(_bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes) | _bn(f"{p}.bn3", planes * 4))
            if j == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                out.update(_bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    return out


def openai_vit(prefix: str, width: int, layers: int, patch: int, grid: int) -> Shapes:
    """OpenAI VisionTransformer keys without the final ``proj``."""
    out: Shapes = {f"{prefix}.conv1.weight": (width, 3, patch, patch), f"{prefix}.class_embedding": (width,),
                   f"{prefix}.positional_embedding": (grid * grid + 1, width)}
    out.update(_ln(f"{prefix}.ln_pre", width) | _ln(f"{prefix}.ln_post", width))
    out.update(_resblocks(f"{prefix}.transformer", width, layers))
    return out


def openai_text(prefix: str, width: int, layers: int, embed: int, vocab: int = 49408, ctx: int = 77) -> Shapes:
    out: Shapes = {f"{prefix}.token_embedding.weight": (vocab, width),
                   f"{prefix}.positional_embedding": (ctx, width), f"{prefix}.text_projection": (width, embed)}
    out.update(_resblocks(f"{prefix}.transformer", width, layers) | _ln(f"{prefix}.ln_final", width))
    return out


def ebc_decoder(block: str, cin: int, c: int) -> Shapes:
    p = "image_decoder.0"
    if block == "bottleneck":
        out = {f"{p}.conv1.weight": (c, cin, 1, 1), f"{p}.conv2.weight": (c, c, 3, 3), f"{p}.conv3.weight": (c, c, 1, 1)}
        out.update(_bn(f"{p}.bn1", c) | _bn(f"{p}.bn2", c) | _bn(f"{p}.bn3", c))
    else:
        out = {f"{p}.conv1.weight": (c, cin, 3, 3), f"{p}.conv2.weight": (c, c, 3, 3)}
        out.update(_bn(f"{p}.bn1", c) | _bn(f"{p}.bn2", c))
    return out


def random_state(shapes: Shapes, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.05
    return out


def assert_all_landed(model: torch.nn.Module, state: dict[str, torch.Tensor], prefix_map: str = "") -> None:
    own = model.state_dict()
    for k, v in state.items():
        key = k[len(prefix_map):] if prefix_map and k.startswith(prefix_map) else k
        assert key in own, f"{key} not in the model"
        torch.testing.assert_close(own[key], v, rtol=0, atol=0, msg=f"{key} did not land")


# -- CLIP-EBC, small widths --------------------------------------------------------------------


def tiny_official_ebc(kind: str) -> tuple[object, Shapes]:
    text = openai_text("text_encoder", 64, 2, 64)
    if kind == "rn":
        spec = small_spec("ebc-tiny-rn").replace(decoder_channels=None, quick_gelu=True)
        shapes = openai_resnet("image_encoder", [1, 1, 1, 1], 16) | ebc_decoder("bottleneck", 512, 512)
        shapes |= {"projection.weight": (64, 512, 1, 1), "projection.bias": (64,)}
    else:
        spec = small_spec("ebc-tiny-vit").replace(quick_gelu=True)
        shapes = openai_vit("image_encoder", 64, 2, 16, 14) | ebc_decoder("basic", 64, 64)
        shapes |= {"vpt_0": (4, 64), "vpt_1": (4, 64)}  # projection: 64 == embed 64 -> none
    return spec, shapes | text | {"logit_scale": ()}


@pytest.mark.parametrize("kind", ["rn", "vit"])
def test_official_ebc_layout_loads_every_tensor(kind: str, tmp_path: Path) -> None:
    spec, shapes = tiny_official_ebc(kind)
    state = random_state(shapes, seed=5)
    path = tmp_path / "best_mae_0.pth"
    torch.save(state, path)
    model = load_official_ebc(path, spec)
    image_state = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
    assert_all_landed(model, image_state)
    assert set(model.state_dict()) == set(image_state) | {"text_features"}
    # the text features come from the file's own text encoder, L2-normalised
    text = bb.text_tower(spec)
    text.load_state_dict({k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")})
    torch.testing.assert_close(model.text_features, bb.encode_prompts(text, spec, list(spec.prompts)))
    assert not torch.allclose(model.text_features, ClipEBC.build(spec).text_features)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1, 28, 28)
    # ckpt.pth training states hold the same dict under model_state_dict
    torch.save({"epoch": 3, "model_state_dict": state}, tmp_path / "ckpt.pth")
    again = load_official_ebc(tmp_path / "ckpt.pth", spec)
    torch.testing.assert_close(again.state_dict()["logit_scale"], state["logit_scale"])
    # and the converted model round-trips through our own format
    save_checkpoint(tmp_path / "ours.pt", model, {"source": "best_mae_0.pth"})
    loaded, _ = load_checkpoint(tmp_path / "ours.pt")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_official_pos_embedding_is_resized_for_another_window(tmp_path: Path) -> None:
    spec, shapes = tiny_official_ebc("vit")
    state = random_state(shapes, seed=6)
    torch.save(state, tmp_path / "best.pth")
    model = load_official_ebc(tmp_path / "best.pth", spec.replace(window=(256, 256)))
    assert model.image_encoder.positional_embedding.shape == (257, 64)
    torch.testing.assert_close(model.image_encoder.positional_embedding[0], state["image_encoder.positional_embedding"][0])


def test_wrong_ebc_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    spec, shapes = tiny_official_ebc("vit")
    # a ViT of another width/patch
    wider = dict(shapes)
    wider["image_encoder.conv1.weight"] = (64, 3, 8, 8)
    torch.save(random_state(wider, 1), tmp_path / "patch8.pth")
    with pytest.raises(OfficialCheckpointError, match=r"conv1.weight file \(64, 3, 8, 8\).*patch 8"):
        load_official_ebc(tmp_path / "patch8.pth", spec)
    # a v1.0.0-style fully fine-tuned ViT (no VPT) offered to a VPT spec
    no_vpt = {k: v for k, v in shapes.items() if not k.startswith("vpt_")}
    torch.save(random_state(no_vpt, 2), tmp_path / "novpt.pth")
    with pytest.raises(OfficialCheckpointError, match="missing 2: vpt_0, vpt_1.*num_vpt=0"):
        load_official_ebc(tmp_path / "novpt.pth", spec)
    assert load_official_ebc(tmp_path / "novpt.pth", spec.replace(num_vpt=0)) is not None
    # an extra key is reported, not ignored
    torch.save(random_state(shapes | {"image_encoder.proj": (64, 64)}, 3), tmp_path / "extra.pth")
    with pytest.raises(OfficialCheckpointError, match="unexpected 1: image_encoder.proj"):
        load_official_ebc(tmp_path / "extra.pth", spec)
    # not CLIP-EBC at all
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "count.ckpt")
    with pytest.raises(OfficialCheckpointError, match="Lightning"):
        load_official_ebc(tmp_path / "count.ckpt", spec)


# -- full-size layouts on the meta device (names and shapes only) ----------------------------------


@pytest.fixture(scope="module")
def meta_models() -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return {"vit": ClipEBC(official_ebc_spec("ViT-B-16", "nwpu")),
                "rn50": ClipEBC(official_ebc_spec("RN50", "sha")),
                "count": ClipCount(official_count_spec(None))}


def _meta(shapes: Shapes) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _own_shapes(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(skip)}


def test_full_size_ebc_layouts_match_the_documented_keys(meta_models: dict[str, torch.nn.Module]) -> None:
    vit = openai_vit("image_encoder", 768, 12, 16, 14) | ebc_decoder("basic", 768, 768)
    vit |= {f"vpt_{i}": (32, 768) for i in range(12)}
    vit |= {"projection.weight": (512, 768, 1, 1), "projection.bias": (512,), "logit_scale": ()}
    assert _own_shapes(meta_models["vit"], ("text_features",)) == vit
    rn = openai_resnet("image_encoder", [3, 4, 6, 3], 64) | ebc_decoder("bottleneck", 2048, 2048)
    rn |= {"projection.weight": (1024, 2048, 1, 1), "projection.bias": (1024,), "logit_scale": ()}
    assert _own_shapes(meta_models["rn50"], ("text_features",)) == rn


def test_vit_l14_offered_as_b16_names_the_cause(meta_models: dict[str, torch.nn.Module]) -> None:
    l14 = openai_vit("image_encoder", 1024, 24, 14, 16) | ebc_decoder("basic", 1024, 1024)
    l14 |= {f"vpt_{i}": (32, 1024) for i in range(24)}
    l14 |= {"projection.weight": (768, 1024, 1, 1), "projection.bias": (768,), "logit_scale": ()}
    with pytest.raises(OfficialCheckpointError) as err:
        load_strict(meta_models["vit"], _meta(l14), "best_mae_0.pth", skip=("text_features",))
    msg = str(err.value)
    assert "width 1024 and patch 14" in msg and "ViT-L/14" in msg and "layers differs" in msg
    assert "shape mismatch: image_encoder.conv1.weight file (1024, 3, 14, 14) vs model (768, 3, 16, 16)" in msg
    assert "unexpected 156:" in msg  # 12 extra blocks x 12 tensors + 12 extra prompt layers
    assert "ResNet" not in msg


def test_our_checkpoint_with_other_bins_names_the_cause(meta_models: dict[str, torch.nn.Module]) -> None:
    state = _meta(_own_shapes(meta_models["vit"]))
    state["text_features"] = torch.empty(3, 512, device="meta")
    with pytest.raises(OfficialCheckpointError, match="file has 3 count bins, the spec 5"):
        load_strict(meta_models["vit"], state, "model.pt")


# -- CLIP-Count --------------------------------------------------------------------------------


def count_trainable(dim: int, width: int, text_width: int, depth: int, tokens: int, grid: int) -> Shapes:
    """The documented trainable keys of the CLIP-Count Lightning checkpoint (``model.`` prefix)."""
    d2, d = dim // 2, dim
    out: Shapes = {"model.img_encoder.visual_prompt": (depth, tokens, width),
                   "model.img_encoder.vpt_proj.weight": (width, width), "model.img_encoder.vpt_proj.bias": (width,),
                   "model.text_encoder.learnable_context": (2, text_width),
                   "model.patch_feat_proj.weight": (d, width), "model.patch_feat_proj.bias": (d,),
                   "model.patch_feat_proj_contrast.weight": (d, width), "model.patch_feat_proj_contrast.bias": (d,),
                   "model.patch_emb_pos_embed": (1, grid * grid, d)}
    out |= _ln("model.img_encoder.vpt_norm", width) | _ln("model.decoder_ln_pre", d) | _ln("model.decoder_norm", d)
    for i in range(2):
        p = f"model.fim_blocks.{i}"
        out |= _ln(f"{p}.norm0", d) | _ln(f"{p}.norm1", d) | _ln(f"{p}.norm2", d)
        out |= {f"{p}.conv0.weight": (d, d, 3, 3), f"{p}.conv0.bias": (d,),
                f"{p}.selfattn.qkv.weight": (3 * d, d), f"{p}.selfattn.qkv.bias": (3 * d,),
                f"{p}.selfattn.proj.weight": (d, d), f"{p}.selfattn.proj.bias": (d,),
                f"{p}.mlp.fc1.weight": (4 * d, d), f"{p}.mlp.fc1.bias": (4 * d,),
                f"{p}.mlp.fc2.weight": (d, 4 * d), f"{p}.mlp.fc2.bias": (d,)}
        for w in ("wq", "wk", "wv", "proj"):
            out |= {f"{p}.attn.{w}.weight": (d, d), f"{p}.attn.{w}.bias": (d,)}
    c = d
    for i in range(4):
        p = f"model.density_decoder.convs.{i}"
        out |= {f"{p}.0.weight": (c // 2, c, 3, 3), f"{p}.0.bias": (c // 2,), f"{p}.1.weight": (c // 2,), f"{p}.1.bias": (c // 2,)}
        c //= 2
    out |= {"model.density_decoder.final_conv.0.weight": (1, c, 1, 1), "model.density_decoder.final_conv.0.bias": (1,),
            "model.density_decoder.pyradim_conv.0.weight": (d2, d, 1, 1), "model.density_decoder.pyradim_conv.0.bias": (d2,),
            "model.density_decoder.pyradim_conv.1.weight": (d2,), "model.density_decoder.pyradim_conv.1.bias": (d2,)}
    return out


def test_full_size_count_layout_matches(meta_models: dict[str, torch.nn.Module]) -> None:
    want = {k[len("model."):]: v for k, v in count_trainable(512, 768, 512, 10, 20, 14).items()}
    assert _own_shapes(meta_models["count"], ("img_encoder.vit.", "text_embedding")) == want


def test_official_count_ckpt_loads_with_local_clip_weights(tmp_path: Path) -> None:
    import open_clip

    # the frozen CLIP weights: a local file for the (tiny) backbone
    base = small_spec("count-tiny")
    cfg = dict(base.backbone)
    cfg.pop("name")
    torch.manual_seed(11)
    clip = open_clip.model.CLIP(**cfg)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    spec = base.replace(pretrained=str(tmp_path / "clip.pt"), heads=8)
    state = random_state(count_trainable(128, 64, 64, 2, 4, 4), seed=9)
    frozen = {"model.img_encoder.vit.conv1.weight": torch.zeros(64, 3, 16, 16)}  # stripped on save, if any
    ckpt = {"state_dict": state | frozen, "pytorch-lightning_version": "1.9.0",
            "hyper_parameters": {"decoder_head": 4, "decoder_depth": 2, "vpt_width": 4, "vpt_depth": 2,
                                 "coop_width": 2, "use_mixed_fim": True, "use_vpt": True}}
    torch.save(ckpt, tmp_path / "clipcount.ckpt")
    model = load_official_count(tmp_path / "clipcount.ckpt", spec)
    assert model.spec.heads == 4  # from the checkpoint's hyper-parameters
    assert_all_landed(model, state, prefix_map="model.")
    # the frozen ViT came from the local CLIP file, not from the checkpoint's stray key
    torch.testing.assert_close(model.img_encoder.vit.conv1.weight, clip.visual.conv1.weight)
    emb = encode_class_prompt(clip, spec, "people", state["model.text_encoder.learnable_context"])
    torch.testing.assert_close(model.text_embedding.reshape(1, -1), emb)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 128, 128)).shape == (1, 1, 128, 128)
    # missing frozen weights source -> clear error; a decoder of another width -> named
    with pytest.raises(OfficialCheckpointError, match="frozen CLIP weights are not in this file"):
        load_official_count(tmp_path / "clipcount.ckpt", base)
    bad = dict(state)
    bad["model.img_encoder.visual_prompt"] = torch.zeros(3, 4, 64)
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(OfficialCheckpointError, match="visual prompts differ"):
        load_official_count(tmp_path / "bad.ckpt", spec)


def test_count_hparams_are_checked() -> None:
    spec = official_count_spec(None)
    assert count_spec_from_hparams(spec, {"decoder_head": 8, "vpt_width": 20}, "x").heads == 8
    with pytest.raises(OfficialCheckpointError, match="use_mixed_fim"):
        count_spec_from_hparams(spec, {"use_mixed_fim": False}, "x")
    with pytest.raises(OfficialCheckpointError, match="ViT-L-14"):
        count_spec_from_hparams(spec, {"backbone": "l14"}, "x")


def test_convert_command_writes_our_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from engines.checkpoint import file_hash
    from pipeline.cli import main

    spec, shapes = tiny_official_ebc("rn")
    torch.save(random_state(shapes, seed=4), tmp_path / "best_mae_0.pth")
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    rc = main(["models", "convert", "ebc", str(tmp_path / "best_mae_0.pth"), str(tmp_path / "out.pt"),
               "--spec", str(tmp_path / "spec.json")])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    model, meta = load_checkpoint(tmp_path / "out.pt")
    assert model.spec == spec
    assert {k: meta[k] for k in ("source", "source_sha256")} == {
        "source": "best_mae_0.pth", "source_sha256": file_hash(tmp_path / "best_mae_0.pth")}
    assert meta["card"]["source"] == "best_mae_0.pth" and "--spec" in meta["card"]["command"]


def test_ebc_conversion_needs_the_data_set() -> None:
    with pytest.raises(ValueError, match="data set"):
        official_ebc_spec("ViT-B-16", "")
    with pytest.raises(ValueError, match="no official anchors for dataset 'mall'"):
        official_ebc_spec("ViT-B-16", "mall")
