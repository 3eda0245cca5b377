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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from engines.train.loss import LossConfig
from engines.train.transforms import AugmentConfig
from engines.yamlconfig import ConfigError, build, interpolate_env, path_field, read_yaml


@dataclass
class ResizeConfig:
    """Resize rule applied once when images are loaded (CLIP-EBC preprocessing)."""

    min_side: int | None = None
    max_side: int | None = None
    multiple: int = 8


@dataclass
class DatasetSource:
    """One dataset: a folder and its format (see ``engines.train.datasets.FORMATS``), and how it
    takes part in a multi-dataset run (its share of each epoch, its held-back part, its zoom)."""

    root: str = path_field()
    format: Literal["shanghaitech", "qnrf", "nwpu", "jhu", "json"] = "json"
    split: str | None = None  # sub-folder / split list name, per format
    select: str | None = None  # 1-based positions to keep, e.g. "1-700"
    name: str | None = None  # label in logs, metrics.csv and the model card (default: folder)
    video: str | None = None  # json: decode each entry's frame_index from this video (in root)
    labels: str | None = path_field(None)  # json: the annotation file, when not in root
    holdout: float | None = None  # random share held back for validation
    val_select: str | None = None  # positions (within select) held back instead, e.g. "701-800"
    weight: float = 1.0  # share of each epoch's views, relative to the other sources
    resize: ResizeConfig | None = None  # this source's resize rule (default: data.resize)
    zoom: tuple[float, float] | None = None  # this source's zoom range (default: augment's)

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root is required (the dataset folder)")
        if self.holdout is not None and not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be a share in (0, 1), got {self.holdout}")
        if self.holdout is not None and self.val_select:
            raise ValueError("give holdout or val_select, not both")
        if self.weight <= 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")
        if self.zoom is not None and not 0 < self.zoom[0] <= self.zoom[1]:
            raise ValueError(f"zoom must be (min, max) with 0 < min <= max, got {self.zoom}")

    @property
    def label(self) -> str:
        return self.name or Path(self.root).name


@dataclass
class DataConfig:
    """Training and validation data: one source or a list (a multi-dataset run). Validation is
    ``val`` when given, else each source's held-back part (``holdout`` / ``val_select``, or the
    top-level ``holdout`` applied to every source that states neither)."""

    train: DatasetSource | list[DatasetSource] = field(default_factory=DatasetSource)
    val: DatasetSource | None = None
    holdout: float | None = None
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    cache: bool = True  # keep decoded images in memory


@dataclass
class ModelSection:
    """Which model to train: a small built-in spec (``base``) or a full spec, plus bins."""

    base: str | None = "ebc-tiny-rn"  # engines.models.small_spec name
    spec: dict[str, Any] = field(default_factory=dict)  # ModelSpec fields set on top of base
    truncation: int = 4  # bins {0}..{t-1}, [t, inf); anchors measured on the training set
    anchors: list[float] | None = None  # fixed anchors instead of measured ones
    init: str | None = path_field(None)  # start from this checkpoint's weights (fine-tuning)
    # "auto": orthonormal bin embeddings when the backbone is random init, else the encoded
    # prompts. A random text tower maps the prompts to nearly parallel features (cosine 0.99
    # measured for bins 0/1), which caps the logit gap between bins and leaves every empty
    # block a floor of expected count.
    text_features: Literal["auto", "prompts", "orthogonal"] = "auto"


@dataclass
class OptimConfig:
    """Optimiser and schedule: linear warm-up, then cosine annealing with warm restarts."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 8
    epochs: int = 100
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    t0: float = 5.0  # first cosine cycle, epochs
    t_mult: float = 2.0
    eta_min: float = 1e-7
    grad_clip: float | None = None
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    crops_per_image: int = 1  # random views of each image per epoch
    views_per_epoch: int | None = None  # cap an epoch at this many views (short epochs)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1 or self.crops_per_image < 1:
            raise ValueError("batch_size, epochs and crops_per_image must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class EvalConfig:
    """Validation during training."""

    every: int = 1  # epochs
    start: int = 1  # first epoch evaluated
    overlap: float = 0.0  # sliding-window overlap (window = the model's)
    # Before each evaluation/checkpoint, recompute the BatchNorm statistics on this many training
    # images at full size (0: keep the running averages of the augmented training crops, which
    # differ from what inference sees and made the validation MAE swing by 2x between epochs).
    precise_bn: int = 0
    # Fit one count scale on this many training images at full size (sum of true counts / sum
    # of predicted) and fold it into the bin anchors of the evaluated and saved model; the model
    # being trained keeps its measured anchors. Training images only: validation stays unseen.
    calibrate: int = 0


@dataclass
class CardSection:
    """The model card's words the trainer cannot measure (``engines.modelcard``); the trainer
    adds the training data, the recipe and the validation figures with their eval command."""

    name: str | None = None  # default: the model spec's name
    summary: str = ""
    trained_on: list[str] = field(default_factory=list)  # default: the training data selection
    recipe: str = ""  # default: a summary of this config (the whole config is in the metadata)
    command: str = ""  # default: set by `crowdstream train`
    scenes: list[str] = field(default_factory=list)
    not_for: list[str] = field(default_factory=list)
    licence: str = ""
    attribution: str = ""


@dataclass
class TrainConfig:
    """Everything ``crowdstream train`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = path_field("runs/train")
    seed: int = 42
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    time_limit_min: float | None = None  # stop at the first epoch end past this wall time
    keep_every: bool = False  # also keep epoch_NNN.pt checkpoints
    card: CardSection = field(default_factory=CardSection)  # words for the checkpoints' card


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a trainer YAML; ``overrides`` merge on top (CLI ``--set``)."""
    path = Path(path)
    raw = read_yaml(path, overrides)
    raw = interpolate_env(raw, str(path))
    return build(TrainConfig, raw, file=str(path), base_dir=path.resolve().parent)


def train_config_from_dict(raw: dict[str, Any], base_dir: Path | None = None) -> TrainConfig:
    """Validate an already-parsed trainer config (tests, programmatic use)."""
    return build(TrainConfig, raw, file=None, base_dir=base_dir)


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
