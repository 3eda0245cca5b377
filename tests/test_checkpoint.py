"""Our self-describing checkpoints: round-trip, no extra arguments, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.checkpoint import file_hash, load_checkpoint, save_checkpoint
from engines.models import create_model, small_spec

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["ebc-tiny-rn", "ebc-tiny-vit"])
def test_round_trip_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = create_model(small_spec(name)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {"epoch": 3, "val_mae": 1.5, "data": ["a"]})
    loaded, meta = load_checkpoint(path)
    assert meta == {"epoch": 3, "val_mae": 1.5, "data": ["a"]}
    assert loaded.spec == model.spec and not loaded.training
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.text_features, model.text_features, rtol=0, atol=0)
    h = file_hash(path)
    assert len(h) == 64 and h == file_hash(path)
    save_checkpoint(tmp_path / "m2.pt", model, {"epoch": 4})
    assert file_hash(tmp_path / "m2.pt") != h


def test_loading_needs_no_text_tower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model(small_spec("ebc-tiny-rn")).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    import engines.models.backbone as bb

    def no_text(*_a: object, **_k: object) -> None:
        raise AssertionError("load_checkpoint must not build a text tower")

    monkeypatch.setattr(bb, "load_towers", no_text)
    monkeypatch.setattr(bb, "text_tower", no_text)
    monkeypatch.setattr(bb, "encode_prompts", no_text)
    loaded, _ = load_checkpoint(path)
    assert loaded.spec.name == "ebc-tiny-rn"


def test_wrong_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(junk)
    official = tmp_path / "best_mae_0.pth"
    torch.save({"image_encoder.conv1.weight": torch.zeros(1), "logit_scale": torch.zeros(())}, official)
    with pytest.raises(ValueError, match="official CLIP-EBC"):
        load_checkpoint(official)
    # weights that do not fit the stored spec
    model = create_model(small_spec("ebc-tiny-rn"))
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["projection.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="projection.weight"):
        load_checkpoint(path)
