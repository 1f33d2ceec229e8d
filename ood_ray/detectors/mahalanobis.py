"""Mahalanobis distances on embeddings, fitted on labelled reference embeddings.

- ``score_mahalanobis`` (Lee, Lee, Lee & Shin, NeurIPS 2018, "A Simple Unified Framework for
  Detecting Out-of-Distribution Samples and Adversarial Attacks"; without input perturbation or
  feature ensembles): class means ``mu_c``, one covariance shared by all classes
  ``S = 1/N sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``, and
  ``score = min_c (x - mu_c)^T S^+ (x - mu_c)``. The paper's confidence is the negative; stored
  as the distance, so higher = more OOD.
- ``score_rmd`` (Ren et al. 2021, "A Simple Fix to Mahalanobis Distance for Improving Near-OOD
  Detection"; the OoD Tool's relative Mahalanobis): the same class distances minus the distance
  to one background Gaussian fitted on all reference embeddings (mean ``mu_0``, covariance
  ``S_0``): ``score = min_c MD_c(x) - MD_0(x)``, higher = more OOD.

- ``score_mahalanobis_pp`` and ``score_rmd_pp`` (Mahalanobis++, Mueller & Hein, ICML 2025,
  "Mahalanobis++: Improving OOD Detection via Feature Normalization"; MDS++ / RMDS++ in OpenOOD
  v1.5's ViT table): the same two scores on L2-normalised embeddings ``x / ||x||``, fitted and
  scored alike, which removes the feature-norm variation that breaks the shared-covariance
  Gaussian assumption.

``S^+`` is the Moore-Penrose pseudo-inverse (symmetric, ``numpy.linalg.pinv(hermitian=True)``), so
a singular covariance -- fewer samples than dimensions, or collinear features -- stays finite. The
distances use ``x^T P x - 2 x^T P mu + mu^T P mu``, one ``(n, D) x (D, D)`` product per batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_ray.detectors.base import Detector, NotFittedError


def _pinv(covariance: np.ndarray) -> np.ndarray:
    return np.linalg.pinv(covariance, hermitian=True)


def class_distances(X: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``(n, C)`` squared Mahalanobis distances of ``X`` to each class mean under ``precision``."""
    X = np.asarray(X, dtype=np.float64)
    XP = X @ precision
    xpx = np.einsum("nd,nd->n", XP, X)
    mpm = np.einsum("cd,cd->c", means @ precision, means)
    return np.maximum(xpx[:, None] - 2.0 * XP @ means.T + mpm[None, :], 0.0)


class Mahalanobis(Detector):
    name = "mahalanobis"
    input = "embeddings"
    requires_fit = True

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> Mahalanobis:
        if y is None:
            raise ValueError(f"{self.name}: fit needs labels y")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"{self.name}: needs at least 2 classes in the reference labels, got {len(self.classes_)}")
        index = np.searchsorted(self.classes_, y)
        self.means_ = np.stack([X[index == c].mean(axis=0) for c in range(len(self.classes_))])
        centred = X - self.means_[index]
        self.precision_ = _pinv(centred.T @ centred / len(X))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise NotFittedError(f"{self.name}: call fit before score")

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return class_distances(X, self.means_, self.precision_).min(axis=1)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name}
        for key in ("classes_", "means_", "precision_", "background_mean_", "background_precision_"):
            if hasattr(self, key):
                value = getattr(self, key)
                state[key.rstrip("_")] = [str(c) for c in value] if key == "classes_" else np.asarray(value).tolist()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Mahalanobis:
        Detector.from_state_dict.__func__(cls, state)
        detector = cls()
        for key in ("classes", "means", "precision", "background_mean", "background_precision"):
            if key in state:
                value = np.asarray(state[key]) if key == "classes" else np.asarray(state[key], dtype=np.float64)
                setattr(detector, key + "_", value)
        return detector


class RelativeMahalanobis(Mahalanobis):
    name = "rmd"

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RelativeMahalanobis:
        super().fit(X, y)
        X = np.asarray(X, dtype=np.float64)
        self.background_mean_ = X.mean(axis=0)
        centred = X - self.background_mean_
        self.background_precision_ = _pinv(centred.T @ centred / len(X))
        return self

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        background = class_distances(X, self.background_mean_[None, :], self.background_precision_)[:, 0]
        return class_distances(X, self.means_, self.precision_).min(axis=1) - background


def l2_normalised(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class MahalanobisPlusPlus(Mahalanobis):
    name = "mahalanobis_pp"

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> MahalanobisPlusPlus:
        return super().fit(l2_normalised(X), y)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return super()._score(l2_normalised(X))


class RelativeMahalanobisPlusPlus(RelativeMahalanobis):
    name = "rmd_pp"

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RelativeMahalanobisPlusPlus:
        return super().fit(l2_normalised(X), y)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return super()._score(l2_normalised(X))
