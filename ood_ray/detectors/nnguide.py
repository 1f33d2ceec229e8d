"""NNGuide, nearest-neighbour guidance (Park, Jung & Teoh, ICCV 2023, "Nearest Neighbor Guidance
for Out-of-Distribution Detection").

A bank of reference features, each L2-normalised and scaled by its own confidence (the negative
energy ``logsumexp(W z_i + b)``). For an image, the guidance is the mean of its ``k`` largest
cosine similarities to the bank (``k = 10``), and the ID confidence is the guidance times its own
negative energy:

    score_nnguide = -mean_topk_i(<z / ||z||, e_i z_i / ||z_i||>) logsumexp(W z + b)

Higher = more OOD. Fitted: the bank (the reference sample the run draws, ``ood.clf_max_samples``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ood_ray.detectors.head import HeadDetector

#: Query rows per block (bounds the ``rows x bank`` similarity matrix).
BLOCK_ROWS = 4096


def _normalised(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


class NNGuide(HeadDetector):
    name = "nnguide"
    requires_fit = True
    PARAMS = ("k",)
    FITTED = ("bank",)

    def __init__(self, k: int = 10) -> None:
        self.k = int(k)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> NNGuide:
        z = np.asarray(X, dtype=np.float64)
        if len(z) < self.k:
            raise ValueError(f"{self.name}: needs at least k={self.k} reference rows, got {len(z)}")
        self.bank_ = _normalised(z) * logsumexp(self.logits(z), axis=1)[:, None]
        return self

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        z = np.asarray(X, dtype=np.float64)
        energy = logsumexp(self.logits(z), axis=1)
        guidance = np.empty(len(z))
        for start in range(0, len(z), BLOCK_ROWS):
            similarities = _normalised(z[start:start + BLOCK_ROWS]) @ self.bank_.T
            top = -np.partition(-similarities, self.k - 1, axis=1)[:, : self.k]
            guidance[start:start + BLOCK_ROWS] = top.mean(axis=1)
        return -(guidance * energy)
