"""The CLIP-EBC training loop: data, DACE loss, schedule, checkpoints, resume, metrics.

One run writes to ``out_dir``:

- ``state.pt``: everything to resume (weights, optimiser, scaler, epoch, best scores, history,
  torch RNG); written at the end of every epoch.
- ``last.pt`` / ``best.pt``: model checkpoints (``engines.checkpoint`` format, spec with the
  measured bins/anchors + weights + training metadata); ``best.pt`` has the lowest validation MAE.
- ``metrics.csv``: one row per epoch (lr, loss parts, train MAE, validation MAE/RMSE, seconds).

Randomness is keyed, not streamed: the sample order of epoch ``e`` comes from ``(seed, e)`` and
the augmentation of sample ``i`` from ``(seed, e, i)``, so a resumed run sees exactly the batches
an uninterrupted run would, and the optimiser and RNG states saved per epoch make the weights
identical.

Example::

    cfg = load_train_config("configs/train_mall_demo.yaml")
    summary = Trainer(cfg).fit()                  # or .fit(resume="runs/x/state.pt")
    print(summary["best_val_mae"])
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.log import get_logger
from engines.modelcard import Figure, ModelCard
from engines.progress import Progress
from engines.train.config import DatasetSource, OptimConfig, ResizeConfig, TrainConfig
from engines.train.datasets import (
    Sample,
    cache_all,
    holdout_split,
    load_dataset,
    parse_ranges,
)
from engines.train.evaluate import evaluate
from engines.train.labels import bin_index, block_counts, fine_bins, measure_anchors
from engines.train.loss import DACELoss
from engines.train.transforms import AugmentConfig, augment, resize_for_training, to_tensor_layout

log = get_logger("train")

STATE_FORMAT = "crowdstream-train-state"


def lr_at(epoch: float, o: OptimConfig) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then cosine with warm restarts."""
    if epoch < o.warmup_epochs:
        return o.warmup_lr + (o.lr - o.warmup_lr) * epoch / o.warmup_epochs
    t, period = epoch - o.warmup_epochs, o.t0
    while t >= period:  # find the position inside the current restart cycle
        t -= period
        period *= o.t_mult
    return o.eta_min + (o.lr - o.eta_min) * (1.0 + math.cos(math.pi * t / period)) / 2.0


def epoch_order(n_items: int, n_views: int, seed: int, epoch: int) -> np.ndarray:
    """The view order of one epoch: ``n_views`` item indices, whole permutations first."""
    rng = np.random.default_rng([seed, epoch])
    reps = -(-n_views // n_items)
    return np.concatenate([rng.permutation(n_items) for _ in range(reps)])[:n_views]


def mixed_epoch_order(sizes: Sequence[int], weights: Sequence[float], n_views: int, seed: int,
                      epoch: int) -> np.ndarray:
    """A multi-dataset epoch: each source gets ``n_views * weight / sum(weights)`` views (whole
    permutations of its items first), as indices into the sources' items laid end to end, the
    whole list shuffled. One source gives exactly ``epoch_order``."""
    if len(sizes) == 1:
        return epoch_order(sizes[0], n_views, seed, epoch)
    rng = np.random.default_rng([seed, epoch, len(sizes)])
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    shares = np.floor(w * n_views).astype(int)
    shares[: n_views - int(shares.sum())] += 1  # the remainder, one each to the first sources
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    parts = []
    for size, share, off in zip(sizes, shares, offsets, strict=True):
        reps = -(-int(share) // size) if share else 0
        perm = [rng.permutation(size) for _ in range(reps)]
        parts.append(np.concatenate(perm)[:share] + off if perm else np.zeros(0, int))
    return rng.permutation(np.concatenate(parts))


def precise_bn(model: nn.Module, images: Sequence[np.ndarray], batch: int = 2,
               window: tuple[int, int] | None = None, block: int = 8) -> None:
    """Recompute every BatchNorm's running mean/variance on ``images`` (HxWx3 uint8, full size),
    cut into the model's ``window`` tiles when given (exactly what inference feeds it).

    Training crops are augmented and smaller than the frames inference sees; exact statistics
    on real frames make the evaluated (and saved) model match deployment. Weights are untouched,
    and train-mode forwards never read the running statistics, so training is unchanged.
    """
    if window is not None:
        from engines.tiling import TileLayout

        tiles = [t for im in images
                 for t in TileLayout.plan(im.shape[0], im.shape[1], window, block).cut(im)]
        images = [np.ascontiguousarray((t.transpose(1, 2, 0) * 255.0).round().astype(np.uint8))
                  for t in tiles]
        batch = max(batch, 8)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not images:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for group in _same_size_runs(images, batch):
                x = np.stack([to_tensor_layout(im) for im in group])
                model(torch.from_numpy(x).to(device))
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.train(was_training)


def _same_size_runs(images: Sequence[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """Consecutive images in batches of at most ``batch`` that share one size (data sets of
    mixed sizes cannot be stacked)."""
    runs: list[list[np.ndarray]] = []
    for im in images:
        if runs and len(runs[-1]) < batch and runs[-1][0].shape == im.shape:
            runs[-1].append(im)
        else:
            runs.append([im])
    return runs


def calibrated_copy(model: nn.Module, images: Sequence[np.ndarray], counts: Sequence[int],
                    overlap: float = 0.0) -> tuple[nn.Module, float]:
    """A copy of ``model`` whose bin anchors are scaled so its total count on ``images`` matches
    ``counts``; returns (copy, scale). Scaling every anchor scales every block's expected count
    by the same factor, so this corrects a global over- or under-count."""
    import copy

    from engines.predict import predict

    pred = sum(predict(model, im, overlap=overlap).count for im in images)
    scale = float(sum(counts)) / pred if pred > 0 else 1.0
    out = copy.deepcopy(model)
    anchors = [a * scale for a in out.spec.anchors]
    out.spec = out.spec.with_bins([tuple(b) for b in out.spec.bins], anchors)
    with torch.no_grad():
        out.anchors.copy_(torch.tensor(anchors, dtype=out.anchors.dtype).view_as(out.anchors))
    return out, scale


def orthogonal_text_features(model: nn.Module, seed: int) -> None:
    """Replace the model's per-bin text features by orthonormal vectors (random-init training).

    Without pretrained CLIP weights the prompts carry no meaning, and a random text tower makes
    their features nearly parallel; orthonormal class embeddings let the logit scale separate
    the bins from the first step. They live in the ``text_features`` buffer, so the checkpoint
    carries them.
    """
    feats = model.text_features
    k, d = feats.shape
    if k > d:
        raise ValueError(f"{k} bins need an embedding of at least {k} dims, got {d}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    with torch.no_grad():
        feats.copy_(q.T.to(feats.dtype))


@dataclass
class Prepared:
    """A sample after the resize rule: pixels (when cached) and points in those pixels."""

    sample: Sample
    points: np.ndarray
    image: np.ndarray | None
    scale: tuple[float, float]
    source: int = 0  # index of its data source
    resize: ResizeConfig | None = None  # the rule it was resized by

    def rgb(self, cfg: TrainConfig) -> np.ndarray:
        if self.image is not None:
            return self.image
        img, _ = _resize(self.sample.load_rgb(), self.sample.points,
                         self.resize or cfg.data.resize)
        return img


def _resize(img: np.ndarray, pts: np.ndarray, r: ResizeConfig) -> tuple[np.ndarray, np.ndarray]:
    return resize_for_training(img, pts, min_side=r.min_side, max_side=r.max_side,
                               multiple=r.multiple)


def prepare(samples: Sequence[Sample], cfg: TrainConfig, source: int = 0,
            resize: ResizeConfig | None = None) -> list[Prepared]:
    """Apply the resize rule once (and keep the pixels when ``data.cache``). Video frames are
    decoded in one pass per video first."""
    rule = resize or cfg.data.resize
    if cfg.data.cache:
        cache_all(samples)
    out = []
    for s in samples:
        img = s.load_rgb()
        rimg, pts = _resize(img, s.points, rule)
        scale = (rimg.shape[1] / img.shape[1], rimg.shape[0] / img.shape[0])
        out.append(Prepared(s, pts, rimg if cfg.data.cache else None, scale, source, rule))
        s._cache = None  # the prepared copy is the one kept
    return out


@dataclass
class SourceSplit:
    """One data source's training and validation samples."""

    label: str
    source: DatasetSource
    train: list[Sample]
    val: list[Sample]


class Trainer:
    """Train a CLIP-EBC model as ``cfg`` describes; see the module docstring for outputs."""

    def __init__(self, cfg: TrainConfig, *, quiet: bool = False,
                 config_path: str | Path | None = None) -> None:
        self.cfg = cfg
        self.quiet = quiet
        self.config_path = str(config_path) if config_path else None  # for the card's commands
        self.out = Path(cfg.out_dir)
        self.device = torch.device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.amp = bool(cfg.optim.amp and self.device.type == "cuda")
        self._augments: list[AugmentConfig] = [cfg.augment]  # per data source, set by fit()

    # -- data ------------------------------------------------------------------------------

    def sources(self) -> list[DatasetSource]:
        t = self.cfg.data.train
        return [t] if isinstance(t, DatasetSource) else list(t)

    def load_data(self) -> list[SourceSplit]:
        """Every source's (train, validation) samples; see ``DataConfig`` for the rules."""
        d = self.cfg.data
        srcs = self.sources()
        out = []
        for i, src in enumerate(srcs):
            samples = load_dataset(src.root, src.format, split=src.split, select=src.select,
                                   video=src.video, labels=src.labels)
            frac = src.holdout if src.holdout is not None else (
                None if src.val_select else d.holdout)
            if d.val is not None:
                train = samples
                val = load_dataset(d.val.root, d.val.format, split=d.val.split,
                                   select=d.val.select, video=d.val.video, labels=d.val.labels)
            elif src.val_select:
                held = set(parse_ranges(src.val_select, len(samples)))
                train = [x for j, x in enumerate(samples) if j not in held]
                val = [x for j, x in enumerate(samples) if j in held]
            elif frac:
                train, val = holdout_split(samples, frac, seed=self.cfg.seed + i)
            else:
                train, val = samples, []
            out.append(SourceSplit(src.label, src, train, val))
        return out

    # -- model -----------------------------------------------------------------------------

    def build_model(self, train: Sequence[Prepared]) -> nn.Module:
        """The spec from config, bins from ``truncation``, anchors measured on ``train``."""
        from engines.checkpoint import load_checkpoint
        from engines.models import ModelSpec, create_model, small_spec

        m = self.cfg.model
        bins = fine_bins(m.truncation)
        block = int(m.spec.get("block_size", 8))
        if m.anchors is not None:  # one per bin: checked with the config
            anchors = list(m.anchors)
        else:
            maps = [block_counts(p.points, p.rgb(self.cfg).shape[:2], block) for p in train]
            anchors = measure_anchors(maps, bins)
        torch.manual_seed(self.cfg.seed)  # the random init (and text tower) follow the seed
        if m.init:  # fine-tune: the checkpoint's own spec, bins and anchors are kept
            model, _ = load_checkpoint(m.init)
            return model
        try:
            if m.base:
                spec = small_spec(m.base).replace(**m.spec)
            else:
                base = {"family": "clip_ebc", "block_size": 8, "bins": bins,
                        "anchors": [lo for lo, _ in bins]}
                spec = ModelSpec.from_dict({**base, **m.spec})
            spec = spec.with_bins(bins, anchors).replace(truncation=m.truncation,
                                                          dataset=self._dataset_name())
        except TypeError as e:  # ModelSpec.replace with an unknown field
            raise ValueError(f"model.spec: {e}") from None
        model = create_model(spec)
        if m.text_features == "orthogonal" or (m.text_features == "auto"
                                               and not spec.pretrained):
            orthogonal_text_features(model, self.cfg.seed)
        return model

    def _dataset_name(self) -> str:
        return "+".join(src.label for src in self.sources())

    # -- the loop --------------------------------------------------------------------------

    def fit(self, resume: str | Path | None = None) -> dict[str, Any]:
        """Train until ``optim.epochs`` (or the time limit); returns a summary dict."""
        cfg, o = self.cfg, self.cfg.optim
        t_start = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        splits = self.load_data()
        self._train_of = {sp.label: set(map(id, sp.train)) for sp in splits}
        self._val_of = {sp.label: set(map(id, sp.val)) for sp in splits}
        train: list[Prepared] = []
        vals: list[tuple[str, list[Prepared]]] = []
        for i, sp in enumerate(splits):
            log.info("data", source=sp.label, train=len(sp.train), val=len(sp.val),
                     root=sp.source.root)
            train += prepare(sp.train, cfg, i, sp.source.resize)
            if sp.val:
                vals.append((sp.label, prepare(sp.val, cfg, i, sp.source.resize)))
        train_s = [x for sp in splits for x in sp.train]
        val_s = [x for sp in splits for x in sp.val]
        self._augments = [self._augment_for(sp.source) for sp in splits]
        sizes = [sum(1 for p in train if p.source == i) for i in range(len(splits))]
        if any(n == 0 for n in sizes):
            empty = [sp.label for sp, n in zip(splits, sizes, strict=True) if n == 0]
            raise ValueError(f"no training images left in source(s) {empty} after the hold-out")
        weights = [sp.source.weight for sp in splits]
        state: dict[str, Any] | None = None
        if resume:
            state = self._read_state(resume)
            from engines.models import build_empty
            from engines.models.spec import ModelSpec

            model = build_empty(ModelSpec.from_dict(state["spec"]))
            model.load_state_dict(state["model"], strict=True)
        else:
            model = self.build_model(train)
        model.to(self.device).train()
        spec = model.spec
        bins = [tuple(b) for b in spec.bins]
        block = int(model.block_size)
        params = [p for p in model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=o.lr, weight_decay=o.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        loss_fn = DACELoss(cfg.loss)
        history: list[dict[str, Any]] = []
        best = {"val_mae": math.inf, "val_rmse": math.inf, "epoch": 0}
        start_epoch = 1
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            history, best = list(state["history"]), dict(state["best"])
            start_epoch = int(state["epoch"]) + 1
            torch.set_rng_state(state["torch_rng"])
            if torch.cuda.is_available() and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            log.info("resume", epoch=start_epoch - 1, best_mae=best["val_mae"])
        log.info("model", spec=spec.backbone_name, window=list(spec.window), bins=len(bins),
                 anchors=[round(a, 4) for a in spec.anchors],
                 params=sum(p.numel() for p in params))

        n_views = o.views_per_epoch or len(train) * o.crops_per_image
        steps = max(1, n_views // o.batch_size)  # drop the ragged last batch (BN stability)
        progress = Progress(total=(o.epochs - start_epoch + 1) * steps, every_s=1.0,
                            enabled=not self.quiet)
        for epoch in range(start_epoch, o.epochs + 1):
            t0 = time.monotonic()
            if len(sizes) == 1:
                order = epoch_order(len(train) * o.crops_per_image, n_views, cfg.seed, epoch)
            else:
                order = mixed_epoch_order([n * o.crops_per_image for n in sizes], weights,
                                          n_views, cfg.seed, epoch)
            sums = {"loss": 0.0, "ce": 0.0, "ot": 0.0, "tv": 0.0, "l1": 0.0, "mae": 0.0}
            lr = o.lr
            for step in range(steps):
                lr = lr_at(epoch - 1 + step / steps, o)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                pos = range(step * o.batch_size, (step + 1) * o.batch_size)
                x, classes, counts, pts = self._batch(train, order, pos, epoch, bins, block)
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                    logits, density = model.forward_train(x)
                loss, parts = loss_fn(logits, density, classes, counts, pts, block)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if o.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, o.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                with torch.no_grad():
                    mae = float((density.float().flatten(1).sum(1)
                                 - counts.flatten(1).sum(1)).abs().mean())
                for k, v in parts.items():
                    sums[k] += v
                sums["mae"] += mae
                progress.update(done=(epoch - start_epoch) * steps + step + 1,
                                label=f"epoch {epoch}/{o.epochs}",
                                info=f"step {step + 1}/{steps} loss {sums['loss'] / (step + 1):.3f} "
                                     f"mae {sums['mae'] / (step + 1):.2f} lr {lr:.2e}")
            row: dict[str, Any] = {"epoch": epoch, "lr": lr}
            row.update({k: v / steps for k, v in sums.items()})
            row["train_mae"] = row.pop("mae")
            row["val_mae"] = row["val_rmse"] = ""
            e = cfg.eval
            if e.precise_bn:
                precise_bn(model, [p.rgb(cfg) for p in train[:: max(1, len(train) // e.precise_bn)]],
                           window=tuple(model.spec.window), block=int(model.block_size))
            deployed = model  # what is evaluated and saved
            if e.calibrate:
                sub = train[:: max(1, len(train) // e.calibrate)]
                deployed, row["count_scale"] = calibrated_copy(
                    model, [p.rgb(cfg) for p in sub], [len(p.points) for p in sub], e.overlap)
            if vals and (epoch >= e.start and (epoch - e.start) % e.every == 0
                         or epoch == o.epochs):
                row.update(self._validate(deployed, vals))
            row["seconds"] = time.monotonic() - t0
            history.append(row)
            meta = self._metadata(epoch, row, train_s, val_s)
            saved = (deployed, meta, epoch, row, train_s, val_s)
            score = row.get("val_score", "")
            improved = score != "" and score < best.get("val_score", best["val_mae"])
            if improved:
                best = {"val_mae": row["val_mae"], "val_rmse": row["val_rmse"], "epoch": epoch,
                        "val_score": score}
                self._save("best.pt", *saved, extra={"best": True})
            elif not vals and epoch == o.epochs:
                self._save("best.pt", *saved)
            self._save("last.pt", *saved)
            if cfg.keep_every:
                self._save(f"epoch_{epoch:03d}.pt", *saved)
            self._write_state(model, optimizer, scaler, epoch, best, history)
            self._write_csv(history)
            log.info("epoch", epoch=epoch, loss=round(row["loss"], 4),
                     train_mae=round(row["train_mae"], 3),
                     val_mae=_r(row["val_mae"]), val_rmse=_r(row["val_rmse"]),
                     val_score=_r(row.get("val_score", "")), best_epoch=best["epoch"],
                     **{k.replace(":", "_"): _r(v) for k, v in row.items()
                        if k.startswith("val_mae:")}, seconds=round(row["seconds"], 1))
            elapsed_min = (time.monotonic() - t_start) / 60
            per_epoch_min = float(np.mean([h["seconds"] for h in history[-3:]])) / 60
            if cfg.time_limit_min and elapsed_min + per_epoch_min > cfg.time_limit_min:
                log.info("time limit", elapsed_min=round(elapsed_min, 1), epoch=epoch)
                break
        progress.close()
        return {"epochs": history[-1]["epoch"] if history else 0, "best_val_mae": best["val_mae"],
                "best_val_rmse": best["val_rmse"], "best_epoch": best["epoch"],
                "out_dir": str(self.out), "history": history}

    def validation_sets(self, sources: Sequence[str] | None = None
                        ) -> list[tuple[str, list[Prepared]]]:
        """The held-back part of each source (or of those named), prepared exactly as ``fit``
        validates them: ``crowdstream eval --train-config`` scores a model on these."""
        out = []
        for i, sp in enumerate(self.load_data()):
            if sp.val and (not sources or sp.label in sources):
                out.append((sp.label, prepare(sp.val, self.cfg, i, sp.source.resize)))
        if sources:
            missing = sorted(set(sources) - {label for label, _ in out})
            if missing:
                raise ValueError(f"no held-back part for source(s) {missing}; sources with one: "
                                 f"{[sp.label for sp in self.load_data() if sp.val]}")
        return out

    def _augment_for(self, src: DatasetSource) -> AugmentConfig:
        if src.zoom is None:
            return self.cfg.augment
        return self.cfg.augment.model_copy(update={"zoom_min": src.zoom[0], "zoom_max": src.zoom[1]})

    def _validate(self, model: nn.Module, vals: Sequence[tuple[str, list[Prepared]]]
                  ) -> dict[str, Any]:
        """Per-source MAE/RMSE; ``val_score`` ranks epochs: the MAE itself for one source, else
        the mean over sources of MAE relative to the source's mean count (at least 1), so a dense
        data set's large numbers do not drown a sparse one's."""
        cfg, row = self.cfg, {}
        rel = []
        for label, items in vals:
            res = evaluate(model, [p.sample for p in items], overlap=cfg.eval.overlap,
                           images=[p.rgb(cfg) for p in items])
            summ = res.summary()
            row[f"val_mae:{label}"], row[f"val_rmse:{label}"] = res.mae, res.rmse
            row[f"val_mean_pred:{label}"] = summ["mean_pred"]
            rel.append(res.mae / max(1.0, summ["mean_true"]))
            if len(vals) == 1:
                row["val_mae"], row["val_rmse"] = res.mae, res.rmse
        if len(vals) == 1:
            row["val_score"] = row["val_mae"]
        else:
            row["val_mae"] = float(np.mean([row[f"val_mae:{lb}"] for lb, _ in vals]))
            row["val_rmse"] = float(np.mean([row[f"val_rmse:{lb}"] for lb, _ in vals]))
            row["val_score"] = float(np.mean(rel))
        return row

    def _batch(self, train: Sequence[Prepared], order: np.ndarray, positions: Sequence[int],
               epoch: int, bins: Sequence[tuple[float, float | None]], block: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        imgs, cls_maps, cnt_maps, pts = [], [], [], []
        for i in positions:
            p = train[int(order[i]) % len(train)]
            # the view's augmentation is keyed by its place in the epoch: replayable on resume
            rng = np.random.default_rng([self.cfg.seed, epoch, int(i)])
            img, pt = augment(p.rgb(self.cfg), p.points, self._augments[p.source], rng)
            counts = block_counts(pt, img.shape[:2], block)
            imgs.append(to_tensor_layout(img))
            cnt_maps.append(counts.astype(np.float32))
            cls_maps.append(bin_index(counts, bins))
            pts.append(torch.from_numpy(np.ascontiguousarray(pt, dtype=np.float32)))
        x = torch.from_numpy(np.stack(imgs)).to(self.device)
        classes = torch.from_numpy(np.stack(cls_maps)).long().to(self.device)
        counts_t = torch.from_numpy(np.stack(cnt_maps)).to(self.device)
        return x, classes, counts_t, pts

    # -- files -----------------------------------------------------------------------------

    def _metadata(self, epoch: int, row: dict[str, Any], train: Sequence[Sample],
                  val: Sequence[Sample]) -> dict[str, Any]:
        d = self.cfg.data
        per_source = {k.split(":", 1)[1]: {} for k in row if k.startswith("val_mae:")}
        for k, v in row.items():
            if ":" in k and k.startswith("val_"):
                metric, label = k.split(":", 1)
                per_source[label][metric.removeprefix("val_")] = v
        return {"trainer": "crowdstream.engines.train", "epoch": epoch,
                "count_scale": row.get("count_scale", 1.0),
                "val_mae": row["val_mae"], "val_rmse": row["val_rmse"],
                "val_score": row.get("val_score", ""), "val_per_source": per_source,
                "train_mae": row["train_mae"], "train_images": len(train),
                "val_images": len(val),
                "datasets": [{"name": src.label, "root": src.root, "format": src.format,
                              "select": src.select, "video": src.video,
                              "holdout": src.holdout if src.holdout is not None else d.holdout,
                              "val_select": src.val_select} for src in self.sources()],
                "config": self.cfg.model_dump(mode="json")}

    def _save(self, name: str, model: nn.Module, meta: dict[str, Any], epoch: int,
              row: dict[str, Any], train: Sequence[Sample], val: Sequence[Sample],
              extra: dict[str, Any] | None = None) -> None:
        """One checkpoint file with its metadata and model card."""
        from engines.checkpoint import save_checkpoint

        card = self._card(epoch, row, train, val, self.out / name, model.spec)
        save_checkpoint(self.out / name, model, {**meta, **(extra or {})}, card=card)

    def _card(self, epoch: int, row: dict[str, Any], train: Sequence[Sample],
              val: Sequence[Sample], path: Path, spec: Any) -> ModelCard:
        """The checkpoint's model card: the config's ``card:`` words plus what was measured
        (one figure per validated source, each with the command that gives it again)."""
        c, o = self.cfg.card, self.cfg.optim
        figures = []
        for src in self.sources():
            mae = row.get(f"val_mae:{src.label}", "")
            if mae == "":
                continue
            n = sum(1 for s in val if id(s) in self._val_of.get(src.label, ()))
            figures.append(Figure(dataset=self._val_label(src), mae=round(float(mae), 4),
                                  rmse=round(float(row[f"val_rmse:{src.label}"]), 4), images=n,
                                  command=self._eval_command(path, src),
                                  source=f"measured here (validation after epoch {epoch})"))
        trained_on = c.trained_on or [
            f"{src.label} ({src.format}" + (f", video {src.video}" if src.video else "")
            + (f", images {src.select}" if src.select else "") + "): "
            + f"{sum(1 for s in train if id(s) in self._train_of.get(src.label, ()))} images"
            for src in self.sources()]
        recipe = c.recipe or (f"{o.optimizer} lr {o.lr:g}, batch {o.batch_size}, epoch {epoch} "
                              f"of {o.epochs}, crop {list(self.cfg.augment.crop)}, block "
                              f"{spec.block_size}, {len(spec.bins)} bins; the whole config is in "
                              "this checkpoint's metadata")
        command = c.command or ("crowdstream train CONFIG (the config is in this checkpoint's "
                                "metadata)")
        return ModelCard(name=c.name or spec.name or self.out.name, summary=c.summary,
                         trained_on=tuple(trained_on), recipe=recipe, command=command,
                         figures=tuple(figures), scenes=tuple(c.scenes), not_for=tuple(c.not_for),
                         licence=c.licence, attribution=c.attribution)

    def _val_label(self, src: DatasetSource) -> str:
        d = self.cfg.data
        if d.val is not None:
            return (f"{Path(d.val.root).name}" + (f" split {d.val.split}" if d.val.split else "")
                    + (f" images {d.val.select}" if d.val.select else "") + " (validation)")
        if src.val_select:
            return f"{src.label}: positions {src.val_select} held back"
        frac = src.holdout if src.holdout is not None else d.holdout
        return f"{src.label}: {frac:g} held back at random (seed {self.cfg.seed})"

    def _eval_command(self, path: Path, src: DatasetSource) -> str:
        """The ``crowdstream eval`` command that gives the validation figure again."""
        import shlex

        d, e = self.cfg.data, self.cfg.eval
        if d.val is None:
            if not self.config_path:
                return ""  # the trainer's own split: reproducible only from its config
            cmd = ["crowdstream", "eval", str(path), "--train-config", self.config_path,
                   "--source", src.label]
        else:
            cmd = ["crowdstream", "eval", str(path), "--data", d.val.root, "--format",
                   d.val.format]
            if d.val.split:
                cmd += ["--split", d.val.split]
            if d.val.select:
                cmd += ["--select", d.val.select]
        if e.overlap:
            cmd += ["--overlap", f"{e.overlap:g}"]
        return shlex.join(cmd)

    def _write_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, epoch: int, best: dict[str, Any],
                     history: list[dict[str, Any]]) -> None:
        state = {"format": STATE_FORMAT, "epoch": epoch, "spec": model.spec.to_dict(),
                 "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "best": best, "history": history, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        tmp = self.out / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out / "state.pt")

    @staticmethod
    def _read_state(path: str | Path) -> dict[str, Any]:
        path = Path(path)
        if path.is_dir():
            path = path / "state.pt"
        if not path.is_file():
            raise FileNotFoundError(f"resume state not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not a training state written by crowdstream train "
                             "(expected out_dir/state.pt)")
        return state

    def _write_csv(self, history: list[dict[str, Any]]) -> None:
        cols = ["epoch", "lr", "loss", "ce", "ot", "tv", "l1", "train_mae", "val_mae",
                "val_rmse", "val_score", "count_scale", "seconds"]
        for row in history:  # per-source columns, in first-seen order
            cols += [k for k in row if ":" in k and k not in cols]
        with (self.out / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                            for k, v in row.items()})


def _r(v: Any) -> Any:
    return round(v, 3) if isinstance(v, float) and math.isfinite(v) else v
