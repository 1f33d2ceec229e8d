"""Maximum logit (Hendrycks et al., ICML 2022, "Scaling Out-of-Distribution Detection for
Real-World Settings").

``score_maxlogit = -max_c z_c`` -- the paper scores in-distribution by the largest logit; negated
here so that higher = more OOD. Unbounded; comparable only within one model.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.base import Detector


class MaxLogit(Detector):
    name = "maxlogit"
    input = "logits"

    @staticmethod
    def compute(logits: np.ndarray) -> np.ndarray:
        return -np.asarray(logits, dtype=np.float64).max(axis=-1)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self.compute(X)
