"""The DACE loss of CLIP-EBC: cross-entropy over count bins plus a weighted DMCount count loss.

DMCount's count loss has three parts, each weighted from the config:

- OT: the entropic optimal-transport (Sinkhorn, log domain) distance between the normalised
  predicted map and the head points; its gradient with respect to the *unnormalised* map is
  built from the source dual potential and applied as ``sum(pred * grad.detach())``.
- TV: the L1 distance between the normalised predicted and ground-truth block maps, times the
  true count (so crowded images weigh more).
- count: ``|sum(pred) - n|``.

Example::

    loss_fn = DACELoss(LossConfig())
    total, parts = loss_fn(logits, density, classes, counts, points, block=8)
    total.backward()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from engines.yamlconfig import ConfigModel


class LossConfig(ConfigModel):
    """Weights of the DACE parts (CLIP-EBC defaults)."""

    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy over count "
                                                    "bins.")
    count_weight: float = Field(1.0, ge=0, description="Weight of the whole DMCount term.")
    ot_weight: float = Field(0.1, ge=0, description="DMCount: weight of the optimal-transport "
                                                    "part.")
    tv_weight: float = Field(0.01, ge=0, description="DMCount: weight of the total-variation "
                                                     "part.")
    l1_weight: float = Field(1.0, ge=0, description="DMCount: weight of the count (L1) part.")
    sinkhorn_reg: float = Field(10.0, gt=0, description="Entropic regulariser of the Sinkhorn "
                                                        "OT.")
    sinkhorn_iters: int = Field(100, ge=1, description="Sinkhorn iterations.")
    ce_reduction: Literal["sum", "mean"] = Field("sum", description="Cross-entropy over blocks: "
                                                 "sum (CLIP-EBC's) or mean.")


def sinkhorn_potential(a: torch.Tensor, cost: torch.Tensor, log_b: torch.Tensor, reg: float,
                       iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropic OT between source weights ``a`` (B, m) and target log-weights ``log_b`` (B, n).

    ``cost`` is (B, m, n); padded targets have ``log_b = -inf``. Returns the source potential
    ``f`` (B, m) and the transport cost ``<P, C>`` of each plan (B,). Runs in the log domain so
    the tiny regulariser (DMCount: 10 on squared pixel distances) stays stable, and batched so
    one Sinkhorn loop serves the whole batch.
    """
    log_a = torch.log(a.clamp_min(1e-12))
    k = -cost / reg
    f = torch.zeros_like(a)
    g = torch.zeros_like(log_b).masked_fill(torch.isinf(log_b), 0.0)
    for _ in range(iters):
        f = -reg * torch.logsumexp(k + (g / reg + log_b)[:, None, :], dim=2)
        g = -reg * torch.logsumexp(k + (f / reg + log_a)[:, :, None], dim=1)
    log_p = k + (f / reg + log_a)[:, :, None] + (g / reg + log_b)[:, None, :]
    plan_cost = (log_p.exp() * cost).sum(dim=(1, 2))
    return f, plan_cost


def ot_loss(density: torch.Tensor, points: Sequence[torch.Tensor], block: int, reg: float,
            iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DMCount OT term per image: (surrogate losses with the right gradient, OT distances).

    ``density`` is (B, h, w) predicted counts per block, ``points`` B tensors (n_i, 2) of x/y
    pixels; images without points get 0. Both results are (B,).
    """
    bsz, h, w = density.shape
    dev = density.device
    out_s = density.new_zeros(bsz, dtype=torch.float32)
    out_d = torch.zeros(bsz, dtype=torch.float32, device=dev)
    keep = [i for i in range(bsz) if len(points[i]) > 0]
    if not keep:
        return out_s, out_d
    with torch.no_grad():
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * block
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * block
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
        n_max = max(len(points[i]) for i in keep)
        pts = torch.zeros(len(keep), n_max, 2, device=dev)
        log_b = torch.full((len(keep), n_max), -math.inf, device=dev)
        for j, i in enumerate(keep):
            n = len(points[i])
            pts[j, :n] = points[i].to(dev).float()
            log_b[j, :n] = -math.log(n)
        cost = torch.cdist(centres[None].expand(len(keep), -1, -1), pts) ** 2
        flat = density[keep].detach().float().reshape(len(keep), -1).clamp_min(0)
        total = flat.sum(1, keepdim=True)
        prob = flat / (total + 1e-8)
        f, dist = sinkhorn_potential(prob, cost, log_b, reg, iters)
        # d/dz of W(z / |z|) at the unnormalised map z (the potential is defined up to a constant)
        grad = f / (total + 1e-8) - (prob * f).sum(1, keepdim=True) / (total + 1e-8)
    surrogate = (density[keep].float().reshape(len(keep), -1) * grad).sum(1)
    idx = torch.tensor(keep, device=dev)
    return out_s.index_put((idx,), surrogate), out_d.index_put((idx,), dist)


class DACELoss:
    """Distribution-aware classification + DMCount count loss on a batch."""

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def __call__(self, logits: torch.Tensor, density: torch.Tensor, classes: torch.Tensor,
                 counts: torch.Tensor, points: Sequence[torch.Tensor], block: int
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """``logits`` (B,K,h,w), ``density`` (B,1,h,w), ``classes`` (B,h,w) long, ``counts``
        (B,h,w) float true block counts, ``points`` B tensors (n_i, 2). Returns (loss, parts)."""
        c = self.cfg
        if logits.shape[1] == 0:  # a density head: no bins to classify, the count parts only
            ce = density.new_zeros(())
        else:
            ce = F.cross_entropy(logits.float(), classes, reduction="none")
            ce = ce.flatten(1).sum(1).mean() if c.ce_reduction == "sum" else ce.mean()
        dens = density.float()[:, 0]
        pred_count = dens.flatten(1).sum(1)
        gt_count = counts.flatten(1).sum(1)
        l1 = (pred_count - gt_count).abs().mean()
        # TV between normalised maps, weighted by the true count (DMCount)
        pn = dens / (pred_count[:, None, None] + 1e-8)
        gn = counts / (gt_count[:, None, None] + 1e-8)
        tv = ((pn - gn).abs().flatten(1).sum(1) * gt_count).mean()
        ot = dens.new_zeros(())
        ot_dist = 0.0
        if c.ot_weight > 0:
            surrogate, dist = ot_loss(dens, points, block, c.sinkhorn_reg, c.sinkhorn_iters)
            ot, ot_dist = surrogate.mean(), float(dist.mean())
        count_loss = c.ot_weight * ot + c.tv_weight * tv + c.l1_weight * l1
        total = c.ce_weight * ce + c.count_weight * count_loss
        parts = {"loss": float(total.detach()), "ce": float(ce.detach()),
                 "ot": ot_dist, "tv": float(tv.detach()), "l1": float(l1.detach())}
        return total, parts
