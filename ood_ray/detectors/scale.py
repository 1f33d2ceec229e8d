"""SCALE (Xu, Chen, Franchi & Yao, ICLR 2024, "Scaling for Training Time and Post-hoc
Out-of-distribution Detection Enhancement").

Like ASH-S, but nothing is pruned: with ``s1 = sum(z)`` and ``s2`` the sum of the ``k = D -
round(D p)`` largest activations (``p = 0.85``, the paper's ImageNet setting), the **whole**
feature vector is scaled by ``exp(s1 / s2)``:

    score_scale = -logsumexp(W (z exp(s1 / s2)) + b)

Applied after the last average pooling, as in the paper. Higher = more OOD. No fit.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.head import HeadDetector, energy_score, largest_sum


class SCALE(HeadDetector):
    name = "scale"
    PARAMS = ("percentile",)

    def __init__(self, percentile: float = 0.85) -> None:
        self.percentile = float(percentile)

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_head()
        z = np.asarray(X, dtype=np.float64)
        factor = np.exp(z.sum(axis=1) / largest_sum(z, self.percentile))
        return energy_score(self.logits(z * factor[:, None]))
