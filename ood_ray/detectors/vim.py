"""ViM, Virtual-logit Matching (Wang, Li, Feng & Zhang, CVPR 2022, "ViM: Out-Of-Distribution
with Virtual-logit Matching").

The origin moves to ``u = -pinv(W) b``; the principal subspace of the centred reference features
``z - u`` is spanned by the eigenvectors of their second-moment matrix ``(Z - u)^T (Z - u) / n``
with the ``d`` largest eigenvalues (``d = 1000`` for features of at least 2,048 dimensions, 512 for
at least 768, else half the dimensions -- the paper's choices); the residual ``x_res`` is the part
of ``z - u`` in the complement. ``alpha = mean_i max_c f_c(z_i) / mean_i ||x_res(z_i)||`` over the
reference rows scales the residual norm into a virtual logit ``alpha ||x_res||``, and

    score_vim = alpha ||x_res(z)|| - logsumexp(W z + b)

Higher = more OOD. Fitted: ``u``, the residual basis, ``alpha``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ood_ray.detectors.head import HeadDetector


def default_dimension(features: int) -> int:
    """The paper's principal dimension ``d`` for a feature width."""
    if features >= 2048:
        return 1000
    if features >= 768:
        return 512
    return features // 2


class ViM(HeadDetector):
    name = "vim"
    requires_fit = True
    PARAMS = ("dimension",)
    FITTED = ("origin", "residual_basis", "alpha")

    def __init__(self, dimension: int | None = None) -> None:
        self.dimension = dimension

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ViM:
        self._check_head()
        z = np.asarray(X, dtype=np.float64)
        d = self.dimension if self.dimension is not None else default_dimension(z.shape[1])
        if z.shape[1] < d:
            d = z.shape[1] // 2
        self.origin_ = -(np.linalg.pinv(self.weight_) @ self.bias_)
        centred = z - self.origin_
        _, vectors = np.linalg.eigh(centred.T @ centred / len(z))  # eigenvalues ascending
        self.residual_basis_ = np.ascontiguousarray(vectors[:, : z.shape[1] - d])
        residual = np.linalg.norm(centred @ self.residual_basis_, axis=1)
        self.alpha_ = float(self.logits(z).max(axis=1).mean() / residual.mean())
        return self

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        z = np.asarray(X, dtype=np.float64)
        virtual = self.alpha_ * np.linalg.norm((z - self.origin_) @ self.residual_basis_, axis=1)
        return virtual - logsumexp(self.logits(z), axis=1)
