"""The trainer's YAML config (``crowdstream train CONFIG``), validated like the run config.

Paths are relative to the config file. Example (``configs/train_mall_demo.yaml``)::

    data:
      train: {root: ../../shared/data/mall, format: json, select: "1-700"}
      val: {root: ../../shared/data/mall, format: json, select: "701-800"}
    model:
      base: ebc-tiny-rn
      spec: {window: [480, 640]}
      truncation: 2
    augment: {crop: [240, 320], zoom_max: 1.2}
    optim: {epochs: 60, batch_size: 4, lr: 1.0e-3}

    cfg = load_train_config("configs/train_mall_demo.yaml", overrides={"optim": {"epochs": 2}})
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from engines.train.loss import LossConfig
from engines.train.transforms import AugmentConfig
from engines.yamlconfig import (
    ConfigError,
    ConfigModel,
    Frozen,
    FrozenDict,
    Items,
    OneOrMany,
    Pair,
    PathStr,
    Pattern,
    interpolate_env,
    load_section,
    read_yaml,
    rule_error,
)

Share = Annotated[float, Field(gt=0, lt=1)]


class ResizeConfig(ConfigModel):
    """Resize rule applied once when images are loaded (CLIP-EBC preprocessing)."""

    min_side: PositiveInt | None = Field(None, description="Enlarge so the short side is at "
                                                           "least this (pixels).")
    max_side: PositiveInt | None = Field(None, description="Shrink so the long side is at most "
                                                           "this (pixels).")
    multiple: PositiveInt = Field(8, description="Round both sides to a multiple of this.")

    @model_validator(mode="after")
    def _ordered(self) -> ResizeConfig:
        if self.min_side and self.max_side and self.min_side > self.max_side:
            raise rule_error(f"must be >= min_side ({self.min_side}), got {self.max_side}",
                             "max_side")
        return self


class DatasetSource(ConfigModel):
    """One dataset: a folder and its format (see ``engines.train.datasets.FORMATS``), and how it
    takes part in a multi-dataset run (its share of each epoch, its held-back part, its zoom)."""

    root: PathStr = Field(
        description="The dataset folder (relative to the config's folder).")
    format: Literal["shanghaitech", "qnrf", "nwpu", "jhu", "json"] = Field(
        "json", description="Annotation format of the folder.")
    split: str | None = Field(None, description="Sub-folder / split list name, per format.")
    select: str | None = Field(None, description="1-based positions to keep, e.g. \"1-700\".")
    name: str | None = Field(None, description="Label in logs, metrics.csv and the model card "
                                               "(default: the folder's name).")
    video: str | None = Field(None, description="json: decode each entry's frame_index from "
                                                "this video (in root).")
    labels: PathStr | None = Field(None, description="json: the annotation file, when not in "
                                                     "root.")
    holdout: Share | None = Field(None, description="Random share held back for validation, in "
                                                    "(0, 1).")
    val_select: str | None = Field(None, description="Positions (within select) held back "
                                                     "instead, e.g. \"701-800\".")
    weight: PositiveFloat = Field(1.0, description="Share of each epoch's views, relative to the "
                                                   "other sources.")
    resize: ResizeConfig | None = Field(None, description="This source's resize rule (default: "
                                                          "data.resize).")
    zoom: Pair[PositiveFloat] | None = Field(None, description="This source's [min, max] zoom "
                                                               "(default: augment's).")

    @model_validator(mode="after")
    def _one_validation_rule(self) -> DatasetSource:
        if self.holdout is not None and self.val_select:
            raise rule_error("give holdout or val_select, not both", "val_select")
        if self.zoom is not None and self.zoom[0] > self.zoom[1]:
            raise rule_error(f"must be [min, max] with min <= max, got {list(self.zoom)}", "zoom")
        return self

    @property
    def label(self) -> str:
        return self.name or Path(self.root).name


class DataConfig(ConfigModel):
    """Training and validation data: one source or a list (a multi-dataset run). Validation is
    ``val`` when given, else each source's held-back part (``holdout`` / ``val_select``, or the
    top-level ``holdout`` applied to every source that states neither)."""

    train: OneOrMany[DatasetSource] = Field(
        description="One source mapping, or a list of them (a multi-dataset run; a tuple once "
                    "loaded).")
    val: DatasetSource | None = Field(None, description="The validation set (one source only).")
    holdout: Share | None = Field(None, description="Share of every source held back for "
                                                    "validation, unless it says otherwise.")
    resize: ResizeConfig = Field(default_factory=ResizeConfig, description="Resize rule for "
                                                                           "every source.")
    cache: bool = Field(True, description="Keep decoded images in memory.")

    @model_validator(mode="after")
    def _some_training_data(self) -> DataConfig:
        if isinstance(self.train, tuple) and not self.train:
            raise rule_error("needs at least one source", "train")
        if self.val is not None and isinstance(self.train, tuple) and len(self.train) > 1:
            raise rule_error("names one validation set; with several training sources hold back "
                             "part of each (holdout / val_select) instead", "val")
        return self


class ModelSection(ConfigModel):
    """Which model to train: a small built-in spec (``base``) or a full spec, plus bins."""

    base: str | None = Field("ebc-tiny-rn", description="engines.models.small_spec name the spec "
                                                        "starts from; null: spec is complete.")
    spec: Frozen[str, Any] = Field(default_factory=FrozenDict, description="ModelSpec fields set "
                                   "on top of base.")
    truncation: PositiveInt = Field(4, description="Bins {0}..{t-1}, [t, inf); anchors measured "
                                                   "on the training set.")
    anchors: Items[float] | None = Field(None, description="Fixed bin anchors instead of "
                                                           "measured ones (truncation + 1).")
    init: PathStr | None = Field(None, description="Start from this checkpoint's weights "
                                                   "(fine-tuning).")
    # "auto": orthonormal bin embeddings when the backbone is random init, else the encoded
    # prompts. A random text tower maps the prompts to nearly parallel features (cosine 0.99
    # measured for bins 0/1), which caps the logit gap between bins and leaves every empty
    # block a floor of expected count.
    text_features: Literal["auto", "prompts", "orthogonal"] = Field(
        "auto", description="Bin text features: auto (orthogonal for a random backbone, else "
                            "prompts), prompts or orthogonal.")

    @model_validator(mode="after")
    def _one_anchor_per_bin(self) -> ModelSection:
        if self.anchors is not None and len(self.anchors) != self.truncation + 1:
            raise rule_error(f"needs {self.truncation + 1} values (truncation + 1 bins), got "
                             f"{len(self.anchors)}", "anchors")
        return self


class OptimConfig(ConfigModel):
    """Optimiser and schedule: linear warm-up, then cosine annealing with warm restarts."""

    optimizer: Literal["adam", "adamw"] = Field("adam", description="Optimiser.")
    lr: PositiveFloat = Field(1e-4, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay.")
    batch_size: PositiveInt = Field(8, description="Views per step.")
    epochs: PositiveInt = Field(100, description="Epochs to train.")
    warmup_epochs: float = Field(5.0, ge=0, description="Linear warm-up from warmup_lr to lr "
                                                        "(epochs).")
    warmup_lr: float = Field(1e-6, ge=0, description="Learning rate at the start of warm-up.")
    t0: PositiveFloat = Field(5.0, description="First cosine cycle (epochs).")
    t_mult: float = Field(2.0, ge=1, description="Each cosine cycle is this many times longer.")
    eta_min: float = Field(1e-7, ge=0, description="Learning rate at the bottom of a cycle.")
    grad_clip: PositiveFloat | None = Field(None, description="Clip the gradient norm to this; "
                                                              "null: no clipping.")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    crops_per_image: PositiveInt = Field(1, description="Random views of each image per epoch.")
    views_per_epoch: PositiveInt | None = Field(None, description="Cap an epoch at this many "
                                                                  "views (short epochs).")


class EvalConfig(ConfigModel):
    """Validation during training."""

    every: PositiveInt = Field(1, description="Evaluate every this many epochs.")
    start: PositiveInt = Field(1, description="First epoch evaluated.")
    overlap: float = Field(0.0, ge=0, lt=1, description="Sliding-window overlap, in [0, 1) "
                                                        "(window = the model's).")
    # Before each evaluation/checkpoint, recompute the BatchNorm statistics on this many training
    # images at full size (0: keep the running averages of the augmented training crops, which
    # differ from what inference sees and made the validation MAE swing by 2x between epochs).
    precise_bn: int = Field(0, ge=0, description="Recompute BatchNorm statistics on this many "
                                                 "full-size training images before each "
                                                 "evaluation (0: off).")
    # Fit one count scale on this many training images at full size (sum of true counts / sum
    # of predicted) and fold it into the bin anchors of the evaluated and saved model; the model
    # being trained keeps its measured anchors. Training images only: validation stays unseen.
    calibrate: int = Field(0, ge=0, description="Fit one count scale on this many full-size "
                                                "training images into the saved anchors (0: "
                                                "off).")


class CardSection(ConfigModel):
    """The model card's words the trainer cannot measure (``engines.modelcard``); the trainer
    adds the training data, the recipe and the validation figures with their eval command."""

    name: str | None = Field(None, description="The model's name (default: the spec's name).")
    summary: str = Field("", description="One or two sentences: what the model is.")
    trained_on: Items[str] = Field((), description="Training data, one line each (default: "
                                                   "the sources and their selections).")
    recipe: str = Field("", description="How it was trained (default: a summary of this config; "
                                        "the whole config is in the checkpoint's metadata).")
    command: str = Field("", description="The command that trains it (default: set by "
                                         "'crowdstream train').")
    scenes: Items[str] = Field((), description="Scenes it is meant for.")
    not_for: Items[str] = Field((), description="Scenes it is not meant for.")
    licence: str = Field("", description="Licence of the weights.")
    attribution: str = Field("", description="Data and code to credit.")


class TrainConfig(ConfigModel):
    """Everything ``crowdstream train`` needs."""

    data: DataConfig = Field(description="Training and validation data.")
    model: ModelSection = Field(default_factory=ModelSection, description="The model to train.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training-time "
                                                                              "augmentation.")
    loss: LossConfig = Field(default_factory=LossConfig, description="DACE loss weights.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and "
                                                                        "schedule.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="When and how the model is "
                                                                     "evaluated while training.")
    out_dir: PathStr = Field("runs/train", description="Checkpoints, metrics.csv and the model "
                                                       "card (relative to the config's folder).")
    seed: int = Field(42, ge=0, description="Seed of every random choice.")
    device: Annotated[str, Pattern(r"^(cpu|cuda(:[0-9]+)?)$", "cpu, cuda or cuda:N")] = Field(
        "cpu", description="cpu, cuda or cuda:N.")
    threads: PositiveInt | None = Field(None, description="torch.set_num_threads; null: torch's "
                                                          "default.")
    time_limit_min: PositiveFloat | None = Field(None, description="Stop at the first epoch end "
                                                 "past this wall time (minutes).")
    keep_every: bool = Field(False, description="Also keep epoch_NNN.pt checkpoints.")
    card: CardSection = Field(default_factory=CardSection, description="Words for the "
                              "checkpoints' model card.")


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a trainer YAML; ``overrides`` merge on top (CLI ``--set``)."""
    path = Path(path)
    raw = read_yaml(path, overrides)
    raw = interpolate_env(raw, str(path))
    return load_section(TrainConfig, raw, file=path, base_dir=path.resolve().parent)


def train_config_from_dict(raw: dict[str, Any], base_dir: Path | None = None) -> TrainConfig:
    """Validate an already-parsed trainer config (tests, programmatic use)."""
    return load_section(TrainConfig, raw, base_dir=base_dir)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["optim.epochs=3", "model.truncation=2"]`` -> nested overrides (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(None, item, "expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out
