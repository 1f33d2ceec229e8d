"""Predictive entropy of one classifier (Shannon entropy of the softmax; e.g. Hendrycks & Gimpel
2017 discuss it beside MSP).

``score_entropy = -sum_c p_c ln p_c / ln C``, ``p = softmax(z)``: 0 for a one-hot prediction,
1 for a uniform one, so models with different class counts are comparable.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.base import Detector, normalized_entropy, softmax


class Entropy(Detector):
    name = "entropy"
    input = "logits"

    @staticmethod
    def compute(logits: np.ndarray) -> np.ndarray:
        return normalized_entropy(softmax(logits))

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self.compute(X)
