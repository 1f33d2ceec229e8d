"""ASH-S (Djurisic, Bozanic, Ashok & Liu, ICLR 2023, "Extremely Simple Activation Shaping for
Out-of-Distribution Detection").

Per image: ``s1 = sum(z)``; every activation but the ``k = D - round(D p)`` largest is set to 0
(``p = 0.9``, the paper's ASH-S@90); ``s2`` = the sum of the kept ones; the kept ones are scaled by
``exp(s1 / s2)``; the result goes through the head and is scored by the energy:

    score_ash = -logsumexp(W (prune_p(z) exp(s1 / s2)) + b)

Applied to the pooled penultimate features (the run's embeddings). Higher = more OOD. No fit.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.head import HeadDetector, energy_score, kept_count


class ASH(HeadDetector):
    name = "ash"
    PARAMS = ("percentile",)

    def __init__(self, percentile: float = 0.9) -> None:
        self.percentile = float(percentile)

    def shaped(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, dtype=np.float64)
        k = kept_count(z.shape[1], self.percentile)
        s1 = z.sum(axis=1)
        top = np.argpartition(-z, k - 1, axis=1)[:, :k]
        kept = np.zeros_like(z)
        rows = np.arange(len(z))[:, None]
        kept[rows, top] = z[rows, top]
        return kept * np.exp(s1 / kept.sum(axis=1))[:, None]

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_head()
        return energy_score(self.logits(self.shaped(X)))
