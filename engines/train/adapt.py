"""Site adaptation: fine-tune a counting model for one camera (``crowdstream adapt``).

Inputs, any mix (``pipeline.adapt`` builds them from a run config's camera):

- ``LabeledFrame``: a frame as the pipeline decodes it (full resolution) with head points, a
  count for the frame, or counts for zones (each zone a mask function of the density grid);
- ``FootagePair``: two unlabeled frames of the camera a fraction of a second apart.

Every frame goes through the model exactly as in the pipeline: the model's resize rule
(``engines.predict.resize_for``), the windows of ``engines.tiling.TileLayout`` (zero-padded at
the border, overlaps averaged when stitched), and the camera's ROI on the stitched density map.
The tiles of a frame run as one batch and are stitched with differentiable torch ops, so the loss
sees the count the pipeline will report.

Losses (all counts in people, inside the ROI):

- points: DACE (``engines.train.loss``: cross-entropy over count bins + DMCount's OT, TV and count
  L1), as the trainer uses, on the whole stitched frame;
- a count: ``|predicted - n|``; zone counts: the sum over the zones of ``|predicted in zone - n|``
  (the zone's mask weights the density map, as ``pipeline.zones`` counts it);
- footage, nested-crop ranking: a crop of a footage frame (at its native scale, never resized,
  zero-padded like a tile) and two crops nested in it go through the model on their own; a crop
  must never be counted higher than a larger crop holding it: a margin ranking loss (margin 0),
  ``relu(c_inner - c_outer) / (c_inner + c_outer + 1)``, summed over the two nested pairs;
- footage, temporal consistency: ``|c_t - c_t+dt| / (c_t + c_t+dt + 1)`` between the counts of
  the two frames of a pair;
- footage, anchor: ``|c - c_start| / (c_start + 1)`` between the counts of every footage view
  (frames and crops) and those of the starting model (frozen), weight 0.1 with footage only.

Ranking and consistency are both satisfied by a model that counts nothing (ranking alone is
unstable). Written as plain differences they pull every count down (measured: the demo model lost
about a fifth of its count in six steps on Mall footage); divided by the counts involved they are
blind to a common scale, and the anchor holds the starting model's level. With labels the
anchor is off by default (the labels hold the level).

BatchNorm layers stay in eval mode while training (batches of one or two frames give useless
batch statistics) and keep the base model's statistics. Re-estimating them on the camera's frames
first (AdaBN, ``adabn=True``, the cheapest unsupervised domain adaptation for classifiers) is
opt-in: counts are sums of a density, and new statistics move their level. On the Mall camera,
footage-only adaptation of the general model with AdaBN counted 194 people on average on frames
with 35.8 (its anchor is the starting model, so it kept the level AdaBN gave): the pipeline's MAE
on frames 701-800 went from 5.88 to 158 (``benchmarks/bench_adapt.py --adabn``,
benchmarks/RESULTS.md). Learning rate: cosine from ``lr``
to 0 over the budget (``steps`` or ``time_limit_s``, whichever ends first), after a linear
warm-up over the first ``warmup_steps``: Adam moves every weight by about ``lr`` from its first
step on, and three full-size first steps moved the demo model's counts on Mall by a quarter.

The guard rail is the caller's: ``split_holdout`` holds back a share of the labeled frames and
``score`` measures base and adapted model on them through ``engines.predict`` (the pipeline's
tiling) with the ROI and zone masks applied as the pipeline applies them.

Example::

    train, held = split_holdout(frames, 0.25, seed=0)
    result = Adapter(base, AdaptSettings(time_limit_s=300), roi=roi_fn).run(train, footage)
    print(score(base, held, roi_fn).mae, score(result.model, held, roi_fn).mae)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.log import get_logger
from engines.predict import predict, resize_for
from engines.tiling import TileLayout
from engines.train.labels import bin_index, block_counts
from engines.train.loss import DACELoss, LossConfig
from engines.train.trainer import precise_bn
from engines.train.transforms import to_tensor_layout

log = get_logger("adapt")

# (map_shape (rows, cols), frame_size (h, w), cell_pixels) -> share of each map cell inside
MaskFn = Callable[[tuple[int, int], tuple[int, int], float], np.ndarray]


@dataclass
class LabeledFrame:
    """A labeled frame: one of ``points`` ((n, 2) x, y pixels), ``count`` or ``zones`` (zone
    name -> (mask function, people in the zone)). Points win over a count, a count over zones."""

    name: str
    rgb: np.ndarray  # H x W x 3 uint8, the frame as the pipeline decodes it
    points: np.ndarray | None = None
    count: float | None = None
    zones: dict[str, tuple[MaskFn, float]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.points is not None:
            return "points"
        if self.count is not None:
            return "count"
        if self.zones:
            return "zones"
        raise ValueError(f"frame {self.name}: no points, count or zone counts")


@dataclass
class FootagePair:
    """Two unlabeled frames of the camera ``dt_s`` seconds apart (temporal consistency)."""

    first: np.ndarray
    second: np.ndarray
    dt_s: float


@dataclass(frozen=True)
class AdaptSettings:
    """How long and how hard to adapt; the loss weights (see the module docstring)."""

    lr: float | None = None  # None: 3e-5 with labels, 1e-5 with footage only
    weight_decay: float = 1e-4
    steps: int | None = None  # stop after this many steps ...
    time_limit_s: float | None = 300.0  # ... or this long, whichever comes first
    rank_weight: float = 1.0
    temporal_weight: float = 1.0
    anchor_weight: float | None = None  # None: 0.1 with footage only, 0 when there are labels
    overlap: float = 0.0  # the pipeline's model.overlap
    window: tuple[int, int] | None = None  # the pipeline's model.window (default: the model's)
    hflip: bool = True
    adabn: bool = False  # opt-in: it moved counts 5x on Mall (module docstring)
    bn_views: int = 64  # frames used to re-estimate BatchNorm statistics
    grad_clip: float = 10.0
    warmup_steps: int = 10  # lr rises linearly over these (Adam's first steps are its biggest)
    seed: int = 0
    loss: LossConfig = field(default_factory=lambda: LossConfig(sinkhorn_iters=30))

    def lr_for(self, has_labels: bool) -> float:
        # footage only: Adam moves every weight by about lr per step whatever the gradient's
        # size, and on the demo model 5 steps at 3e-5 moved the level by 17% (at 1e-5: 5%)
        if self.lr is not None:
            return self.lr
        return 3e-5 if has_labels else 1e-5

    def anchor_for(self, has_labels: bool) -> float:
        if self.anchor_weight is not None:
            return self.anchor_weight
        return 0.0 if has_labels else 0.1

    def describe(self, has_labels: bool, has_footage: bool) -> str:
        """One line for the model card's recipe."""
        parts = [("AdaBN on the camera's frames, then " if self.adabn else "")
                 + f"Adam lr {self.lr_for(has_labels):g} "
                 f"({self.warmup_steps} warm-up steps, cosine to 0), "
                 f"weight decay {self.weight_decay:g}, BatchNorm frozen, grad clip "
                 f"{self.grad_clip:g}"]
        if has_labels:
            parts.append("labeled frames: DACE on head points, |count error| on counts and "
                         "zone counts")
        if has_footage:
            parts.append(f"footage: nested-crop ranking x{self.rank_weight:g}, temporal "
                         f"consistency x{self.temporal_weight:g}, anchor to the starting "
                         f"model's counts x{self.anchor_for(has_labels):g}")
        return "; ".join(parts)


@dataclass
class AdaptResult:
    """The adapted model (eval mode) and how the run went."""

    model: nn.Module
    steps: int
    seconds: float
    history: list[dict[str, float]]

    def mean_parts(self, last: int = 20) -> dict[str, float]:
        """Mean of each loss part over the last ``last`` steps (for logs and the card)."""
        rows = self.history[-last:]
        keys = sorted({k for r in rows for k in r})
        return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


# -- geometry: the pipeline's resize rule, tiling and masks ----------------------------------


class Geometry:
    """How frames of one size go through the model: resize rule, windows, map cells, masks."""

    def __init__(self, model: nn.Module, height: int, width: int,
                 window: tuple[int, int] | None = None, overlap: float = 0.0) -> None:
        spec = model.spec
        self.frame_size = (int(height), int(width))
        self.nh, self.nw = resize_for(spec, height, width)
        self.scale = self.nh / height
        self.block = int(spec.block_size)
        self.window = tuple(window or spec.window)
        self.layout = TileLayout.plan(self.nh, self.nw, self.window, self.block, overlap)
        self.map_shape = self.layout.map_shape
        self.cell_pixels = self.block / self.scale  # frame pixels per map cell

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The frame resized as ``engines.predict`` resizes it (a no-op for most models)."""
        if rgb.shape[:2] != self.frame_size:
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the camera's frames are "
                             f"{self.frame_size[1]}x{self.frame_size[0]}")
        if (self.nh, self.nw) == self.frame_size:
            return np.ascontiguousarray(rgb)
        import cv2

        return cv2.resize(rgb, (self.nw, self.nh), interpolation=cv2.INTER_CUBIC)

    def mask(self, fn: MaskFn | None) -> np.ndarray | None:
        if fn is None:
            return None
        m = np.asarray(fn(self.map_shape, self.frame_size, self.cell_pixels), np.float32)
        if m.shape != self.map_shape:
            raise ValueError(f"mask is {m.shape}, the density map {self.map_shape}")
        return m

    def views(self, image: np.ndarray) -> list[np.ndarray]:
        """The windows of a prepared frame as H x W x 3 uint8, zero-padded like the tiles."""
        wh, ww = self.window
        out = []
        for y, x in self.layout.positions:
            v = np.zeros((wh, ww, 3), np.uint8)
            crop = image[y:y + wh, x:x + ww]
            v[: crop.shape[0], : crop.shape[1]] = crop
            out.append(v)
        return out


def forward_frames(model: nn.Module, x: torch.Tensor, layout: TileLayout, *,
                   logits: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run ``x`` (B, 3, h, w) in [0, 1] through ``layout``'s windows as one batch and stitch
    them as ``TileLayout.stitch`` does (overlaps averaged), keeping gradients.

    Returns (stitched logits (B, K, rows, cols) or None, stitched density (B, rows, cols)).
    """
    b = x.shape[0]
    wh, ww = layout.window
    pad_h, pad_w = layout.padded_height - x.shape[2], layout.padded_width - x.shape[3]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    tiles = torch.stack([x[:, :, y:y + wh, xx:xx + ww] for y, xx in layout.positions], 1)
    tiles = tiles.reshape(b * layout.count, 3, wh, ww)
    if logits and hasattr(model, "forward_train"):
        lg, dens = model.forward_train(tiles)
    else:
        lg, dens = None, model(tiles)
    dens_map = _stitch(dens.float().reshape(b, layout.count, 1, *dens.shape[-2:]), layout)[:, 0]
    lg_map = None
    if lg is not None:
        lg_map = _stitch(lg.float().reshape(b, layout.count, *lg.shape[-3:]), layout)
    return lg_map, dens_map


def _stitch(maps: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """(B, n, C, mh, mw) window maps -> (B, C, rows, cols), the mean where windows overlap."""
    _, n, _, mh, mw = maps.shape
    blk = layout.block
    ph, pw = layout.padded_height // blk, layout.padded_width // blk
    cover = np.zeros((ph, pw), np.float32)
    parts = []
    for i, (y, x) in enumerate(layout.positions):
        r, c = y // blk, x // blk
        parts.append(F.pad(maps[:, i], (c, pw - c - mw, r, ph - r - mh)))
        cover[r:r + mh, c:c + mw] += 1.0
    total = parts[0] if n == 1 else torch.stack(parts).sum(0)
    if n > 1:
        total = total / torch.from_numpy(np.maximum(cover, 1.0)).to(total.device)
    rows, cols = layout.map_shape
    return total[:, :, :rows, :cols]


# -- the guard rail's pieces -------------------------------------------------------------------


def split_holdout(frames: Sequence[LabeledFrame], share: float = 0.25, seed: int = 0
                  ) -> tuple[list[LabeledFrame], list[LabeledFrame]]:
    """(train, held back): ``share`` of the frames at random, at least one, and at least one
    left to train on when there are two or more."""
    n = len(frames)
    if n == 0:
        return [], []
    if not 0.0 < share < 1.0:
        raise ValueError(f"the held-back share must be in (0, 1), got {share}")
    k = max(1, round(n * share))
    if n >= 2:
        k = min(k, n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return ([f for i, f in enumerate(frames) if i not in held],
            [f for i, f in enumerate(frames) if i in held])


@dataclass
class FrameScore:
    name: str
    kind: str
    true: float
    pred: float
    error: float  # absolute; for zone counts the sum over the zones


@dataclass
class Scores:
    """Per-frame results on labeled frames; ``mae`` / ``rmse`` over the frames' errors."""

    frames: list[FrameScore]

    @property
    def mae(self) -> float:
        return float(np.mean([f.error for f in self.frames])) if self.frames else math.nan

    @property
    def rmse(self) -> float:
        if not self.frames:
            return math.nan
        return float(math.sqrt(np.mean([f.error ** 2 for f in self.frames])))


def score(model: Any, frames: Sequence[LabeledFrame], roi: MaskFn | None = None, *,
          overlap: float = 0.0, window: tuple[int, int] | None = None) -> Scores:
    """Count each frame as the pipeline does (``engines.predict``, the ROI on the map, zone masks
    on the masked map) and compare with its labels. Points inside the ROI count by the ROI's
    share of their cell, as the pipeline's masked map would count them."""
    saved = getattr(model, "window", None)
    if window is not None:
        model.window = tuple(window)  # engines.predict reads it before the spec's
    try:
        out = []
        for f in frames:
            dm = predict(model, f.rgb, overlap=overlap)
            dens = dm.map
            geo = (dens.shape, f.rgb.shape[:2], float(dm.cell_pixels))
            r = roi(*geo) if roi is not None else None
            masked = dens * r if r is not None else dens
            out.append(_frame_score(f, masked, r, geo))
        return Scores(out)
    finally:
        if window is not None:
            if saved is None:
                del model.window
            else:
                model.window = saved


def _frame_score(f: LabeledFrame, masked: np.ndarray, roi: np.ndarray | None,
                 geo: tuple[tuple[int, int], tuple[int, int], float]) -> FrameScore:
    pred = float(masked.sum())
    if f.kind == "points":
        assert f.points is not None
        true = float(len(f.points)) if roi is None else _points_in(f.points, roi, geo[2])
        return FrameScore(f.name, "points", true, pred, abs(pred - true))
    if f.kind == "count":
        assert f.count is not None
        return FrameScore(f.name, "count", f.count, pred, abs(pred - f.count))
    err, true, zpred = 0.0, 0.0, 0.0
    for fn, n in f.zones.values():
        p = float((masked * fn(*geo)).sum())
        err += abs(p - n)
        true += n
        zpred += p
    return FrameScore(f.name, "zones", true, zpred, err)


def _points_in(points: np.ndarray, roi: np.ndarray, cell: float) -> float:
    rows = np.clip((points[:, 1] // cell).astype(int), 0, roi.shape[0] - 1)
    cols = np.clip((points[:, 0] // cell).astype(int), 0, roi.shape[1] - 1)
    return float(roi[rows, cols].sum())


# -- the adaptation ----------------------------------------------------------------------------


@dataclass
class _Item:
    """A labeled frame prepared for the model (resized; targets in the resized pixels)."""

    name: str
    kind: str
    image: np.ndarray
    points: np.ndarray | None = None
    count: float | None = None
    zones: list[tuple[np.ndarray, float]] = field(default_factory=list)


class Adapter:
    """Adapt a copy of ``base`` to one camera; see the module docstring for what it does."""

    def __init__(self, base: nn.Module, settings: AdaptSettings | None = None,
                 roi: MaskFn | None = None, *,
                 on_step: Callable[[int, float, dict[str, float]], None] | None = None) -> None:
        self.base = base
        self.s = settings or AdaptSettings()
        self.roi_fn = roi
        self.on_step = on_step
        self.dace = DACELoss(self.s.loss)

    def run(self, labeled: Sequence[LabeledFrame], footage: Sequence[FootagePair] = ()
            ) -> AdaptResult:
        s = self.s
        if not labeled and not footage:
            raise ValueError("nothing to adapt from: no labeled frames and no footage")
        t0 = time.monotonic()
        rng = np.random.default_rng(s.seed)
        torch.manual_seed(s.seed)
        model = copy.deepcopy(self.base).float().cpu()
        first = labeled[0].rgb if labeled else footage[0].first
        geo = Geometry(model, first.shape[0], first.shape[1], s.window, s.overlap)
        self.geo = geo
        self.roi = geo.mask(self.roi_fn)
        items = [self._prepare(f, geo) for f in labeled]
        pairs = [(geo.prepare(p.first), geo.prepare(p.second)) for p in footage]
        camera_frames = [it.image for it in items] + [im for pr in pairs for im in pr]
        if s.adabn:
            self._adabn(model, camera_frames, rng)
        anchor_w = s.anchor_for(bool(items))
        anchor = None
        if pairs and anchor_w > 0:
            anchor = copy.deepcopy(model).eval()
            for p in anchor.parameters():
                p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        lr0 = s.lr_for(bool(items))
        opt = torch.optim.Adam(params, lr=lr0, weight_decay=s.weight_decay)
        _train_frozen_bn(model)
        order = _cycle(len(items), rng)
        history: list[dict[str, float]] = []
        step = 0
        while True:
            frac = self._progress(step, t0)
            if frac >= 1.0:
                break
            warm = min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else 1.0
            lr = lr0 * warm * 0.5 * (1.0 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = lr
            total = torch.zeros(())
            parts: dict[str, float] = {}
            if items:
                loss, p = self._supervised(model, items[next(order)], rng)
                total = total + loss
                parts.update(p)
            if pairs:
                loss, p = self._unsupervised(model, anchor, pairs[int(rng.integers(len(pairs)))],
                                             rng, anchor_w)
                total = total + loss
                parts.update(p)
            opt.zero_grad(set_to_none=True)
            total.backward()
            if s.grad_clip:
                nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            parts["loss"] = float(total.detach())
            history.append(parts)
            step += 1
            if self.on_step is not None:
                self.on_step(step, time.monotonic() - t0, parts)
        # no BatchNorm re-estimation here: the weights were trained through the frozen
        # statistics, re-estimating them would change the function that was trained
        model.eval()
        seconds = time.monotonic() - t0
        log.info("adapted", steps=step, seconds=round(seconds, 1),
                 labeled=len(items), footage_pairs=len(pairs))
        return AdaptResult(model, step, seconds, history)

    # -- pieces ------------------------------------------------------------------------------

    def _progress(self, step: int, t0: float) -> float:
        s = self.s
        fr = [] if s.steps is None else [step / s.steps if s.steps else 1.0]
        if s.time_limit_s:
            fr.append((time.monotonic() - t0) / s.time_limit_s)
        if not fr:
            raise ValueError("give a step limit or a time limit")
        return max(fr)

    def _prepare(self, f: LabeledFrame, geo: Geometry) -> _Item:
        image = geo.prepare(f.rgb)
        it = _Item(f.name, f.kind, image)
        if f.kind == "points":
            assert f.points is not None
            it.points = np.asarray(f.points, np.float32).reshape(-1, 2) * np.float32(geo.scale)
        elif f.kind == "count":
            it.count = f.count
        else:
            for fn, n in f.zones.values():
                m = geo.mask(fn)
                assert m is not None
                it.zones.append((m if self.roi is None else m * self.roi, n))
        return it

    def _adabn(self, model: nn.Module, frames: Sequence[np.ndarray],
               rng: np.random.Generator) -> None:
        """BatchNorm statistics from the camera's frames, cut into the pipeline's windows."""
        if not frames:
            return
        pick = frames if len(frames) <= self.s.bn_views else [
            frames[i] for i in sorted(rng.choice(len(frames), self.s.bn_views, replace=False))]
        views = [v for im in pick for v in self.geo.views(im)]
        precise_bn(model, views, batch=4)

    def _flip(self, rng: np.random.Generator) -> bool:
        return bool(self.s.hflip and self.geo.nw % self.geo.block == 0 and rng.random() < 0.5)

    def _supervised(self, model: nn.Module, it: _Item, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        geo = self.geo
        image, points, roi = it.image, it.points, self.roi
        zones = it.zones
        if self._flip(rng):
            image = image[:, ::-1]
            roi = roi[:, ::-1] if roi is not None else None
            zones = [(m[:, ::-1], n) for m, n in zones]
            if points is not None:
                points = points.copy()
                points[:, 0] = np.clip(geo.nw - points[:, 0], 0, geo.nw - 1e-3)
        x = torch.from_numpy(to_tensor_layout(np.ascontiguousarray(image)))[None]
        want_logits = it.kind == "points"
        logits, dens = forward_frames(model, x, geo.layout, logits=want_logits)
        if it.kind == "points":
            assert points is not None
            counts = block_counts(points, (geo.nh, geo.nw), geo.block)
            if logits is not None:
                classes = bin_index(counts, model.spec.bins)
                loss, parts = self.dace(logits, dens[:, None],
                                        torch.from_numpy(classes)[None].long(),
                                        torch.from_numpy(counts.astype(np.float32))[None],
                                        [torch.from_numpy(points)], geo.block)
                return loss, {f"points_{k}": v for k, v in parts.items() if k != "loss"}
            loss = (dens.sum() - float(len(points))).abs()
            return loss, {"points_l1": float(loss.detach())}
        masked = dens[0] * torch.from_numpy(np.ascontiguousarray(roi)) if roi is not None \
            else dens[0]
        if it.kind == "count":
            assert it.count is not None
            loss = (masked.sum() - float(it.count)).abs()
            return loss, {"count_l1": float(loss.detach())}
        loss = sum(((dens[0] * torch.from_numpy(np.ascontiguousarray(m))).sum() - float(n)).abs()
                   for m, n in zones)
        assert isinstance(loss, torch.Tensor)
        return loss, {"zones_l1": float(loss.detach())}

    def _unsupervised(self, model: nn.Module, anchor: nn.Module | None,
                      pair: tuple[np.ndarray, np.ndarray], rng: np.random.Generator,
                      anchor_w: float) -> tuple[torch.Tensor, dict[str, float]]:
        s, geo = self.s, self.geo
        a, b = pair
        roi = self.roi
        if self._flip(rng):
            a, b = a[:, ::-1], b[:, ::-1]
            roi = roi[:, ::-1] if roi is not None else None
        roi_t = torch.from_numpy(np.ascontiguousarray(roi)) if roi is not None else None
        x = torch.from_numpy(np.stack([to_tensor_layout(np.ascontiguousarray(a)),
                                       to_tensor_layout(np.ascontiguousarray(b))]))
        _, dens = forward_frames(model, x, geo.layout)
        counts = (dens * roi_t if roi_t is not None else dens).flatten(1).sum(1)
        temporal = relative_gap(counts[0], counts[1])
        boxes = nested_boxes(geo, rng)
        crops = _crop_canvas(x[0], boxes, geo, model)
        c_crops = _crop_counts(model(crops), boxes, roi_t)
        rank = ranking_loss(c_crops)
        loss = s.temporal_weight * temporal + s.rank_weight * rank
        parts = {"temporal": float(temporal.detach()), "rank": float(rank.detach())}
        if anchor is not None:
            with torch.no_grad():
                _, dens0 = forward_frames(anchor, x, geo.layout)
                c0 = (dens0 * roi_t if roi_t is not None else dens0).flatten(1).sum(1)
                c0_crops = _crop_counts(anchor(crops), boxes, roi_t)
            anc = anchor_loss(torch.cat([counts, c_crops]), torch.cat([c0, c0_crops]))
            loss = loss + anchor_w * anc
            parts["anchor"] = float(anc.detach())
        return loss, parts


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a - b| / (a + b + 1)``: how far two counts disagree, blind to their common scale (a
    plain ``|a - b|`` shrinks when every count shrinks, which pulls a model towards counting
    nothing)."""
    return (a - b).abs() / (a + b + 1.0)


def ranking_loss(nested: torch.Tensor) -> torch.Tensor:
    """Margin ranking (margin 0) over counts of crops, each inside the one before: an inner
    crop counted above its outer crop costs ``relu(inner - outer)``, relative like
    :func:`relative_gap`."""
    inner, outer = nested[1:], nested[:-1]
    return (F.relu(inner - outer) / (inner + outer + 1.0)).sum()


def anchor_loss(counts: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean relative deviation ``|c - c_ref| / (c_ref + 1)`` from the starting model's counts."""
    return ((counts - reference).abs() / (reference + 1.0)).mean()


def nested_boxes(geo: Geometry, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Three crops (row, col, rows, cols in map cells) of a frame, each inside the one before:
    the outer one 50-100% of a window (or of the frame when smaller) on each side, the inner
    ones 50-80% of the one holding them, all on the block grid and inside the frame."""
    full_r, full_c = geo.nh // geo.block, geo.nw // geo.block
    win_r, win_c = geo.window[0] // geo.block, geo.window[1] // geo.block
    lim_r, lim_c = min(full_r, win_r), min(full_c, win_c)
    f = float(rng.uniform(0.5, 1.0))
    h, w = max(2, round(lim_r * f)), max(2, round(lim_c * f))
    y, x = int(rng.integers(0, full_r - h + 1)), int(rng.integers(0, full_c - w + 1))
    boxes = [(y, x, h, w)]
    for _ in range(2):
        f = float(rng.uniform(0.5, 0.8))
        ih, iw = max(1, round(h * f)), max(1, round(w * f))
        y, x = y + int(rng.integers(0, h - ih + 1)), x + int(rng.integers(0, w - iw + 1))
        h, w = ih, iw
        boxes.append((y, x, h, w))
    return boxes


def _crop_canvas(frame: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]], geo: Geometry,
                 model: nn.Module) -> torch.Tensor:
    """The crops at their native scale, each top-left on a zero canvas (as a frame smaller than
    a window is padded): the outer crop's size on the encoder's grid for models that take any
    size, else the window."""
    blk = geo.block
    if getattr(model, "whole_image", False):
        grid = int(np.lcm(int(getattr(model, "encoder_stride", blk)), blk))
        ch = -(-boxes[0][2] * blk // grid) * grid
        cw = -(-boxes[0][3] * blk // grid) * grid
    else:
        ch, cw = geo.window
    canvas = frame.new_zeros(len(boxes), 3, ch, cw)
    for k, (y, x, h, w) in enumerate(boxes):
        canvas[k, :, : h * blk, : w * blk] = frame[:, y * blk:(y + h) * blk, x * blk:(x + w) * blk]
    return canvas


def _crop_counts(dens: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]],
                 roi: torch.Tensor | None) -> torch.Tensor:
    out = []
    for k, (y, x, h, w) in enumerate(boxes):
        d = dens[k, 0, :h, :w].float()
        if roi is not None:
            d = d * roi[y:y + h, x:x + w]
        out.append(d.sum())
    return torch.stack(out)


def _train_frozen_bn(model: nn.Module) -> None:
    """Train mode with every BatchNorm in eval mode (running statistics used and kept)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _cycle(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Indices 0..n-1 in a fresh random order each round (an empty iterator for n = 0)."""
    while n:
        yield from (int(i) for i in rng.permutation(n))


__all__ = ["AdaptResult", "AdaptSettings", "Adapter", "FootagePair", "FrameScore", "Geometry",
           "LabeledFrame", "MaskFn", "Scores", "anchor_loss", "forward_frames", "nested_boxes",
           "ranking_loss", "relative_gap", "score", "split_holdout"]
