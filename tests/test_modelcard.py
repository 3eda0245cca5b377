"""Model cards: stored with every checkpoint (trained, pulled, shipped), printed, logged at start."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from test_train import make_dots, tiny_config

from engines.checkpoint import (
    load_checkpoint,
    read_checkpoint,
    read_metadata,
    rewrite_metadata,
    save_checkpoint,
    state_dict_hash,
)
from engines.modelcard import Figure, ModelCard, card_from_metadata, card_of, format_card
from engines.models import create_model, small_spec

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo" / "mall_demo_model.pt"
# the demo model's weights as trained (before its card was written): must never change
DEMO_WEIGHTS_SHA256 = "7f799edb179d7897977d21f51f06b3cae4987462b13ac630ba8792a7bece0f15"


def a_card() -> ModelCard:
    return ModelCard(name="m", summary="s", trained_on=["A train"], recipe="r", command="c",
                     figures=[Figure("A val", mae=1.25, rmse=2.5, images=10, command="crowdstream eval")],
                     scenes=["streets"], not_for=["dense crowds"], licence="MIT", attribution="me")


def test_card_round_trips_and_keeps_unknown_keys() -> None:
    card = a_card()
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    newer = card.to_dict() | {"carbon_kg": 1.5}
    assert ModelCard.from_dict(newer).extra == {"carbon_kg": 1.5}
    with pytest.raises(ValueError, match="needs a name"):
        ModelCard(name=" ")
    with pytest.raises(ValueError, match=r"unknown figure keys: \['maee'\]"):
        ModelCard.from_dict({"name": "x", "figures": [{"dataset": "d", "maee": 1}]})
    text = format_card(card)
    assert "A val: MAE 1.25, RMSE 2.5, 10 images (measured here)" in text
    assert "reproduce: crowdstream eval" in text and "meant for:\n    - streets" in text


def test_checkpoints_carry_cards_and_old_ones_load_without(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    model = create_model(small_spec("ebc-tiny-rn")).eval()
    save_checkpoint(tmp_path / "carded.pt", model, {"epoch": 1}, card=a_card())
    assert card_of(tmp_path / "carded.pt") == a_card()
    _, meta = load_checkpoint(tmp_path / "carded.pt")
    assert meta["epoch"] == 1 and card_from_metadata(meta) == a_card()
    # a checkpoint written before cards existed: loads, and says it has none
    save_checkpoint(tmp_path / "old.pt", model, {"epoch": 1})
    assert card_of(tmp_path / "old.pt") is None and "card" not in read_metadata(tmp_path / "old.pt")
    assert main(["models", "info", str(tmp_path / "old.pt")]) == 0
    assert "card: no card" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs a name"):
        save_checkpoint(tmp_path / "bad.pt", model, {"card": {"summary": "no name"}})


def test_a_card_is_written_without_touching_the_weights(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    model = create_model(small_spec("ebc-tiny-vit")).eval()
    save_checkpoint(tmp_path / "m.pt", model, {"epoch": 3})
    before = read_checkpoint(tmp_path / "m.pt")
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(a_card().to_dict()))
    assert main(["models", "card", str(tmp_path / "m.pt"), "--from", str(tmp_path / "card.yaml"),
                 "--out", str(tmp_path / "carded.pt")]) == 0
    assert state_dict_hash(before["state_dict"]) in capsys.readouterr().out
    after = read_checkpoint(tmp_path / "carded.pt")
    assert after["spec"] == before["spec"] and after["metadata"]["epoch"] == 3
    for k, v in before["state_dict"].items():
        assert torch.equal(after["state_dict"][k], v), k
    assert card_of(tmp_path / "carded.pt") == a_card() and card_of(tmp_path / "m.pt") is None
    assert rewrite_metadata(tmp_path / "m.pt", {"x": 1}) == state_dict_hash(before["state_dict"])


def test_the_shipped_demo_model_has_its_card_and_its_original_weights() -> None:
    payload = read_checkpoint(DEMO)
    assert state_dict_hash(payload["state_dict"]) == DEMO_WEIGHTS_SHA256
    card = card_from_metadata(payload["metadata"])
    assert card is not None and card.name == "mall-demo-rn" == payload["spec"]["name"]
    assert payload["metadata"]["val_mae"] == pytest.approx(card.figures[0].mae, abs=0.005)
    assert "--select 701-800" in card.figures[0].command and "Mall" in card.scenes[0]
    assert card.not_for and "research use" in card.licence and "Loy" in card.attribution
    source = yaml.safe_load((DEMO.parent / "mall_demo_model.card.yaml").read_text())
    assert ModelCard.from_dict(source) == card  # the card file in the repo is what is stored


GENERAL = REPO / "engines" / "models" / "shipped" / "general.pt"
GENERAL_WEIGHTS_SHA256 = "1e61e67310dbc8e3b76bcb3b75edb63e5146e307530287f97e020001ab26f05d"


def test_the_shipped_general_model_has_its_card_and_its_trained_weights() -> None:
    from engines.models.shipped import general_model_path

    assert general_model_path() == GENERAL and GENERAL.stat().st_size <= 25 * 2**20
    payload = read_checkpoint(GENERAL)
    assert state_dict_hash(payload["state_dict"]) == GENERAL_WEIGHTS_SHA256
    card = card_from_metadata(payload["metadata"])
    source = yaml.safe_load((GENERAL.parent / "general.card.yaml").read_text())
    assert card is not None and ModelCard.from_dict(source) == card
    # the card's validation figures are the trainer's own, per held-back set
    per_source = payload["metadata"]["val_per_source"]
    for fig, name in zip(card.figures[:3], ("sha", "shb", "scenes"), strict=True):
        assert fig.mae == pytest.approx(per_source[name]["mae"], abs=0.005), name
        assert f"--source {name}" in fig.command and "configs/train_general.yaml" in fig.command


@pytest.mark.parametrize("source", ["scenes", "shb"])
def test_eval_on_the_held_back_sets_gives_the_general_cards_figures(
        shared_data: Path, source: str) -> None:
    import subprocess
    import sys

    card = card_of(GENERAL)
    assert card is not None
    (fig,) = [f for f in card.figures if f"--source {source}" in (f.command or "")]
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "eval", str(GENERAL),
                        "--train-config", "configs/train_general.yaml", "--source", source,
                        "--threads", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "CROWDSTREAM_DATA": str(shared_data)})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)["sets"][source]
    assert got["images"] == fig.images and got["mae"] == pytest.approx(fig.mae, abs=0.005)


def test_a_config_without_a_model_counts_with_the_general_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    from test_pipeline import make_clip, read_jsonl

    clip = make_clip(tmp_path / "a.mp4", 6)
    cfg = {"run_dir": str(tmp_path / "run"), "jsonl": "counts.jsonl", "redis": {"enabled": False},
           "metrics": {"port": None}, "runtime": {"torch_threads": 1},
           "cameras": {"a": {"url": str(clip)}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "run.yaml"),
                        "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    counts, _ = read_jsonl(tmp_path / "run" / "counts.jsonl")
    assert len(counts) == 6 and {c["model"] for c in counts} == {"crowdstream-general"}
    assert "RANDOM" not in r.stderr and "crowdstream-general" in r.stderr


def test_engine_files_carry_their_checkpoints_card(tmp_path: Path) -> None:
    from engines.export import ensure_engine

    model = create_model(small_spec("ebc-tiny-rn")).eval()
    save_checkpoint(tmp_path / "m.pt", model, {}, card=a_card())
    engine = ensure_engine(str(tmp_path / "m.pt"), cache_dir=tmp_path / "engines", max_batch=1)
    assert card_of(engine) == a_card()


def test_run_logs_the_model_name_and_scenes(tmp_path: Path) -> None:
    from pipeline.stages.inference import ModelChoice, describe_model

    model = create_model(small_spec("ebc-tiny-rn")).eval()
    save_checkpoint(tmp_path / "old.pt", model, {})
    assert describe_model(ModelChoice(str(DEMO), None)) == {
        "name": "mall-demo-rn", "scenes": card_of(DEMO).scenes[0]}
    assert describe_model(ModelChoice(str(tmp_path / "old.pt"), None)) == {
        "name": "old.pt", "scenes": "no card"}
    assert describe_model(ModelChoice(None, "ebc-tiny-rn"))["scenes"] == "none (random weights)"


def test_the_trainer_writes_a_card_whose_eval_command_gives_its_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    dots = make_dots(tmp_path / "dots", 24, seed=3)
    raw = tiny_config(dots, tmp_path / "run", optim={"epochs": 1})
    raw["data"] = {"train": {"root": str(dots), "format": "json", "select": "1-16"},
                   "val": {"root": str(dots), "format": "json", "select": "17-24"}}
    raw["card"] = {"scenes": ["white dots on dark ground"], "licence": "MIT (test data)"}
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg_path), "--quiet", "--set", "seed=7"]) == 0
    capsys.readouterr()
    card = card_of(tmp_path / "run" / "best.pt")
    assert card.scenes == ("white dots on dark ground",) and card.licence == "MIT (test data)"
    assert card.command == f"crowdstream train {cfg_path} --set=seed=7"
    assert card.trained_on == ("dots (json, images 1-16): 16 images",)
    fig = card.figures[0]
    assert fig.images == 8 and "--select 17-24" in fig.command and fig.command.endswith("17-24")
    argv = fig.command.split()[1:]  # the command as written, run through our CLI
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mae"] == pytest.approx(fig.mae, abs=1e-3)
    assert summary["rmse"] == pytest.approx(fig.rmse, abs=1e-3)
