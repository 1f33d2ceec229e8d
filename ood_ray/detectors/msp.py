"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017, "A Baseline for Detecting
Misclassified and Out-of-Distribution Examples").

``score_msp = 1 - max_c softmax(z)_c`` -- the paper's confidence turned so that higher = more OOD;
in ``[0, 1 - 1/C]``.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.base import Detector, softmax


class MSP(Detector):
    name = "msp"
    input = "logits"

    @staticmethod
    def compute(logits: np.ndarray) -> np.ndarray:
        return 1.0 - softmax(logits).max(axis=-1)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self.compute(X)
