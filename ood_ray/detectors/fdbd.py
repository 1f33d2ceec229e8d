"""fDBD, feature distance to the decision boundaries (Liu & Qin, ICML 2024, "Fast Decision
Boundary based Out-of-Distribution Detector").

With ``f = W z + b``, the predicted class ``m = argmax f`` and ``mu`` the mean of the reference
embeddings, the distance from ``z`` to the boundary between ``m`` and each other class ``c`` is
``|f_m - f_c| / ||w_m - w_c||``; their mean, relative to the distance from ``z`` to ``mu``, is the
ID confidence:

    score_fdbd = -(1 / (C - 1)) sum_{c != m} |f_m - f_c| / ||w_m - w_c|| / max(||z - mu||, 1e-8)

Higher = more OOD. Fitted: ``mu``.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.head import HeadDetector


class FDBD(HeadDetector):
    name = "fdbd"
    requires_fit = True
    FITTED = ("train_mean",)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> FDBD:
        self.train_mean_ = np.asarray(X, dtype=np.float64).mean(axis=0)
        return self

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        z = np.asarray(X, dtype=np.float64)
        logits = self.logits(z)
        predicted = logits.argmax(axis=1)
        differences = np.abs(logits - logits[np.arange(len(z)), predicted][:, None])
        norms = np.linalg.norm(self.weight_[:, None, :] - self.weight_[None, :, :], axis=2)
        np.fill_diagonal(norms, 1.0)  # the predicted class's own term is 0
        boundary = (differences / norms[predicted]).sum(axis=1)
        distance = np.maximum(np.linalg.norm(z - self.train_mean_, axis=1), 1e-8)
        return -boundary / ((logits.shape[1] - 1) * distance)
