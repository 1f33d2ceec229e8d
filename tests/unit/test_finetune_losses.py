"""OE and MixOE losses against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_ray.finetune.losses import (
    mix,
    mixed_targets,
    mixoe_loss,
    oe_loss,
    soft_cross_entropy,
    uniform_cross_entropy,
)


def log_softmax(z):
    m = max(z)
    s = math.log(sum(math.exp(v - m) for v in z)) + m
    return [v - s for v in z]


def test_uniform_cross_entropy_by_hand():
    z = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
    expected = sum(-sum(log_softmax(row)) / 3 for row in z) / 2
    assert uniform_cross_entropy(torch.tensor(z)).item() == pytest.approx(expected, rel=1e-6)
    # equal logits: the softmax is already uniform, the loss is log C
    assert uniform_cross_entropy(torch.zeros(4, 5)).item() == pytest.approx(math.log(5), rel=1e-6)


def test_oe_loss_by_hand():
    id_logits, labels = [[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]], [0, 2]
    outliers = [[1.0, 1.0, 4.0]]
    ce = -(log_softmax(id_logits[0])[0] + log_softmax(id_logits[1])[2]) / 2
    uniform = -sum(log_softmax(outliers[0])) / 3
    got = oe_loss(torch.tensor(id_logits), torch.tensor(labels), torch.tensor(outliers))
    assert got.item() == pytest.approx(ce + 0.5 * uniform, rel=1e-6)
    got = oe_loss(torch.tensor(id_logits), torch.tensor(labels), torch.tensor(outliers), weight=2.0)
    assert got.item() == pytest.approx(ce + 2.0 * uniform, rel=1e-6)


def test_mixoe_loss_by_hand():
    id_logits, labels = [[3.0, 1.0, 0.0, 0.5]], [1]
    mixed = [[0.2, 1.5, -0.3, 0.0]]
    lam = 0.7
    targets = [lam * (c == 1) + (1 - lam) / 4 for c in range(4)]
    assert mixed_targets(torch.tensor(labels), 4, lam)[0].tolist() == pytest.approx(targets)
    assert sum(targets) == pytest.approx(1.0)
    soft = -sum(t * v for t, v in zip(targets, log_softmax(mixed[0])))
    ce = -log_softmax(id_logits[0])[1]
    got = mixoe_loss(torch.tensor(id_logits), torch.tensor(labels), torch.tensor(mixed), lam)
    assert got.item() == pytest.approx(ce + 5.0 * soft, rel=1e-6)  # the paper scripts' weight 5
    got = mixoe_loss(torch.tensor(id_logits), torch.tensor(labels), torch.tensor(mixed), lam, weight=1.0)
    assert got.item() == pytest.approx(ce + soft, rel=1e-6)
    # l = 1: the mixed term is the plain cross-entropy; l = 0: the OE term
    z = torch.tensor(mixed)
    assert soft_cross_entropy(z, mixed_targets(torch.tensor(labels), 4, 1.0)).item() == pytest.approx(-log_softmax(mixed[0])[1], rel=1e-6)
    assert soft_cross_entropy(z, mixed_targets(torch.tensor(labels), 4, 0.0)).item() == pytest.approx(uniform_cross_entropy(z).item(), rel=1e-6)


def test_mixup_and_cutmix_mix_what_they_say():
    ones, zeros = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    mixed, lam = mix(ones, zeros, "mixup", 1.0, np.random.default_rng(0))
    assert 0 <= lam <= 1 and torch.allclose(mixed, torch.full_like(ones, lam))
    for seed in range(20):
        mixed, lam = mix(ones, zeros, "cutmix", 1.0, np.random.default_rng(seed))
        # every image keeps exactly a share lam of its own (ID) pixels
        assert mixed[0, 0].mean().item() == pytest.approx(lam)
        assert torch.equal(mixed[0], mixed[1])
    with pytest.raises(ValueError, match="mixing"):
        mix(ones, zeros, "blend", 1.0, np.random.default_rng(0))
