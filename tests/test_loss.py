"""DACE / DMCount loss and block labels on small hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.train.labels import bin_index, block_counts, fine_bins, measure_anchors
from engines.train.loss import DACELoss, LossConfig, ot_loss, sinkhorn_potential

torch.set_num_threads(1)


def test_block_counts_and_label_correction() -> None:
    pts = np.array([[1, 1], [2, 3], [7.9, 7.9], [8, 0], [20, 15], [100, 100], [-1, 2]])
    counts = block_counts(pts, (16, 24), 8)
    assert counts.shape == (2, 3)
    assert counts.tolist() == [[3, 1, 0], [0, 0, 1]]  # outside points dropped
    bins = fine_bins(2)
    # 3 heads in a block fall into the open bin [2, inf) (label correction)
    assert bin_index(counts, bins).tolist() == [[2, 1, 0], [0, 0, 1]]
    anchors = measure_anchors([counts, np.array([[2, 0]])], bins)
    assert anchors == pytest.approx([0.0, 1.0, 2.5])  # open bin: mean of 3 and 2


def test_sinkhorn_marginals() -> None:
    a = torch.tensor([[0.5, 0.25, 0.25]])
    cost = torch.tensor([[[0.0, 4.0], [4.0, 0.0], [1.0, 1.0]]])
    log_b = torch.log(torch.tensor([[0.5, 0.5]]))
    f, dist = sinkhorn_potential(a, cost, log_b, reg=0.1, iters=200)
    assert f.shape == (1, 3)
    # optimal plan: 0.5 of mass pays 0, 0.25 pays 0, 0.25 pays 1 -> 0.25
    assert float(dist[0]) == pytest.approx(0.25, abs=0.02)


def test_ot_prefers_mass_on_the_points() -> None:
    pts = [torch.tensor([[12.0, 12.0], [36.0, 20.0]])]
    on = torch.zeros(1, 4, 6)
    on[0, 1, 1] = on[0, 2, 4] = 1.0  # blocks holding the two heads
    spread = torch.full((1, 4, 6), 2.0 / 24)
    _, d_on = ot_loss(on, pts, 8, reg=10.0, iters=100)
    _, d_spread = ot_loss(spread, pts, 8, reg=10.0, iters=100)
    assert float(d_on[0]) < 0.2 * float(d_spread[0])
    # no points: no OT term, no error
    s, d = ot_loss(spread, [torch.zeros(0, 2)], 8, reg=10.0, iters=10)
    assert float(s[0]) == 0.0 and float(d[0]) == 0.0


def test_count_loss_descent_moves_mass_to_heads() -> None:
    torch.manual_seed(0)
    pts = [torch.tensor([[12.0, 12.0], [36.0, 20.0], [40.0, 4.0]])]
    counts = torch.from_numpy(block_counts(pts[0].numpy(), (32, 48), 8)).float()[None]
    classes = torch.from_numpy(bin_index(counts.numpy(), fine_bins(2))).long()
    raw = torch.zeros(1, 1, 4, 6, requires_grad=True)
    logits = torch.zeros(1, 3, 4, 6)  # CE part constant here: only the count loss moves
    loss_fn = DACELoss(LossConfig(sinkhorn_iters=20))
    opt = torch.optim.Adam([raw], lr=0.1)
    first = None
    for _ in range(60):
        density = torch.nn.functional.softplus(raw)
        loss, parts = loss_fn(logits, density, classes, counts, pts, block=8)
        first = parts if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    density = torch.nn.functional.softplus(raw).detach()[0, 0]
    assert parts["loss"] < first["loss"]
    assert abs(float(density.sum()) - 3.0) < 0.3
    head_mass = float(density[counts[0] > 0].sum())
    assert head_mass > 0.6 * float(density.sum())


def test_dace_parts_and_weights() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4)
    density = torch.rand(2, 1, 4, 4)
    counts = torch.zeros(2, 4, 4)
    counts[0, 1, 1] = 1
    classes = counts.long()
    pts = [torch.tensor([[12.0, 12.0]]), torch.zeros(0, 2)]
    full, parts = DACELoss(LossConfig())(logits, density, classes, counts, pts, 8)
    ce_only, p2 = DACELoss(LossConfig(count_weight=0.0))(logits, density, classes, counts, pts, 8)
    assert parts["ce"] == pytest.approx(p2["ce"]) and float(ce_only) == pytest.approx(p2["ce"])
    assert float(full) > float(ce_only)
    expected_l1 = float((density.sum(dim=(1, 2, 3)) - counts.sum(dim=(1, 2))).abs().mean())
    assert parts["l1"] == pytest.approx(expected_l1, rel=1e-5)
