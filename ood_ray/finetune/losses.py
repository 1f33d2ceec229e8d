"""The fine-tuning objectives of Outlier Exposure and Mixture Outlier Exposure.

**Outlier Exposure** (Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier
Exposure", ICLR 2019): the usual cross-entropy on in-distribution images plus, on auxiliary
outliers, the cross-entropy from the softmax to the uniform distribution over the ``C`` classes,

    L_OE = CE(f(x), y) + lambda * mean_outliers( -(1/C) sum_c log softmax(f(x_out))_c ),   lambda = 0.5.

**MixOE** (Zhang, Inkawhich, Linderman, Chen & Li, "Mixture Outlier Exposure: Towards
Out-of-Distribution Detection in Fine-Grained Environments", WACV 2023): each ID image is mixed with
an outlier -- mixup ``x~ = l x + (1 - l) x_out`` or CutMix (an outlier box pasted into the ID image,
``l`` then the share of ID pixels left) -- with ``l ~ Beta(alpha, alpha)``, and its target is the
one-hot label interpolated toward uniform by the same coefficient,

    t~ = l onehot(y) + (1 - l) / C,
    L_MixOE = CE(f(x), y) + beta * mean( -sum_c t~_c log softmax(f(x~))_c ),

defaults of the paper's code (``zjysteven/MixOE``, ``scripts/train.sh``): mixup with ``alpha = 1``
(``l`` uniform on [0, 1]; CutMix there with ``alpha = 2``), ``beta = 5`` (its argument default is 1),
10 epochs of SGD
(learning rate 1e-3, momentum 0.9, Nesterov, weight decay 1e-5) with a per-step cosine schedule to
1e-6, batch 32, one outlier per ID image; its fine-tuning augmentation is a random crop, a
horizontal flip and a colour jitter (brightness 32/255, saturation 0.5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ood_ray.config import MIX_OPS  # the mixing operations, named in the config

OE_WEIGHT = 0.5
MIXOE_WEIGHT = 5.0
MIXOE_ALPHA = 1.0


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of the cross-entropy from ``softmax(logits)`` to the uniform distribution:
    ``-(1/C) sum_c log softmax_c`` (= ``logsumexp(z) - mean(z)``)."""
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of ``-sum_c t_c log softmax(z)_c``."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def oe_loss(id_logits: torch.Tensor, labels: torch.Tensor, outlier_logits: torch.Tensor,
            weight: float = OE_WEIGHT) -> torch.Tensor:
    """``L_OE`` of the module docstring."""
    return F.cross_entropy(id_logits, labels) + weight * uniform_cross_entropy(outlier_logits)


def mixed_targets(labels: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
    """``l onehot(y) + (1 - l) / C``."""
    onehot = F.one_hot(labels, num_classes).to(torch.float32)
    return lam * onehot + (1.0 - lam) / num_classes


def mixoe_loss(id_logits: torch.Tensor, labels: torch.Tensor, mixed_logits: torch.Tensor, lam: float,
               weight: float = MIXOE_WEIGHT) -> torch.Tensor:
    """``L_MixOE`` of the module docstring for the mixed batch's logits and coefficient ``lam``."""
    targets = mixed_targets(labels, id_logits.shape[1], lam)
    return F.cross_entropy(id_logits, labels) + weight * soft_cross_entropy(mixed_logits, targets)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of area about ``(1 - lam)`` of the image centred uniformly (clipped at the borders), as
    CutMix draws it: ``(top, left, bottom, right)``."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(top), int(left), int(bottom), int(right)


def mix(images: torch.Tensor, outliers: torch.Tensor, op: str, alpha: float, rng: np.random.Generator
        ) -> tuple[torch.Tensor, float]:
    """``(mixed batch, l)`` for one step: ``l ~ Beta(alpha, alpha)``; for CutMix the outlier box is
    pasted into the ID images and ``l`` becomes the exact share of ID pixels left."""
    if op not in MIX_OPS:
        raise ValueError(f"mixing {op!r}: one of {', '.join(MIX_OPS)}")
    lam = float(rng.beta(alpha, alpha))
    if op == "mixup":
        return lam * images + (1.0 - lam) * outliers, lam
    height, width = images.shape[-2:]
    top, left, bottom, right = cutmix_box(height, width, lam, rng)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = outliers[..., top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)
