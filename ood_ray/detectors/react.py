"""ReAct (Sun, Guo & Li, NeurIPS 2021, "ReAct: Out-of-distribution Detection With Rectified
Activations").

The penultimate activations are clipped at ``c``, the ``p``-th percentile (``p = 90``) of all the
activation values of the reference (in-distribution) embeddings -- NumPy's linear percentile over
the flattened ``(n, D)`` matrix -- then passed through the head and scored by the energy:

    score_react = -logsumexp(W min(z, c) + b)

Higher = more OOD. Fitted: ``c``.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.head import HeadDetector, energy_score


class ReAct(HeadDetector):
    name = "react"
    requires_fit = True
    PARAMS = ("percentile",)
    FITTED = ("threshold",)

    def __init__(self, percentile: float = 0.9) -> None:
        self.percentile = float(percentile)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ReAct:
        self.threshold_ = float(np.percentile(np.asarray(X, dtype=np.float64), self.percentile * 100))
        return self

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return energy_score(self.logits(np.minimum(np.asarray(X, dtype=np.float64), self.threshold_)))
