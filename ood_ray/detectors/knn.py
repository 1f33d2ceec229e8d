"""Nearest-neighbour distances to a reference set of embeddings.

Both work on L2-normalised embeddings ``u``; with ``s = <u, v>`` the cosine similarity of a pair:

- ``score_knn`` -- KNN-OOD (Sun, Ming, Zhu & Li, ICML 2022, "Out-of-distribution Detection with
  Deep Nearest Neighbors"): the Euclidean distance to the ``k``-th nearest reference embedding,
  ``||u - v_(k)||_2 = sqrt(2 - 2 s_(k))``. The paper thresholds the negative distance as an
  in-distribution score; stored as the distance, so higher = more OOD. ``k = 50`` for
  CIFAR-size reference sets, 1000 for ImageNet-size ones (the paper's choices).
- ``score_knn_mean`` -- DataEval's ``OODKNeighbors`` (default cosine metric): the mean cosine
  distance ``1 - s`` to the ``k`` nearest reference embeddings.

A reference image is never its own neighbour (leave-one-out): the distributed stage asks for
``k + 1`` neighbours of reference rows and drops the row itself. The in-process detector below
(:class:`KNN`) is the same computation on one FAISS ``IndexFlatIP``, for small data and tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_ray.detectors.base import Detector, NotFittedError


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def kth_distance(similarities: np.ndarray, k: int) -> np.ndarray:
    """``sqrt(2 - 2 s_(k))`` from similarities sorted descending per row, ``(n, >= k)``."""
    s = np.clip(np.asarray(similarities, dtype=np.float64)[:, k - 1], -1.0, 1.0)
    return np.sqrt(np.maximum(2.0 - 2.0 * s, 0.0))


def mean_cosine_distance(similarities: np.ndarray, k: int) -> np.ndarray:
    """``mean(1 - s)`` over the ``k`` most similar, from similarities sorted descending."""
    return (1.0 - np.clip(np.asarray(similarities, dtype=np.float64)[:, :k], -1.0, 1.0)).mean(axis=1)


class _KNNBase(Detector):
    input = "embeddings"
    requires_fit = True

    def __init__(self, k: int = 50) -> None:
        self.k = k

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> _KNNBase:
        return self._index(l2_normalize(X))

    def _index(self, reference: np.ndarray) -> _KNNBase:
        import faiss

        if len(reference) < self.k:
            raise ValueError(f"{self.name}: k={self.k} needs at least {self.k} reference embeddings, got {len(reference)}")
        self.index_ = faiss.IndexFlatIP(reference.shape[1])
        self.index_.add(reference)
        self.reference_ = reference
        return self

    def similarities(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "index_"):
            raise NotFittedError(f"{self.name}: call fit before score")
        similarities, _ = self.index_.search(l2_normalize(X), self.k)
        return similarities

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name, "k": self.k}
        if hasattr(self, "reference_"):
            state["reference"] = self.reference_.tolist()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> _KNNBase:
        Detector.from_state_dict.__func__(cls, state)
        detector = cls(state["k"])
        if "reference" in state:  # already normalised: added as stored
            detector._index(np.asarray(state["reference"], dtype=np.float32))
        return detector


class KNN(_KNNBase):
    name = "knn"

    def _score(self, X: np.ndarray) -> np.ndarray:
        return kth_distance(self.similarities(X), self.k)


class KNNMean(_KNNBase):
    name = "knn_mean"

    def _score(self, X: np.ndarray) -> np.ndarray:
        return mean_cosine_distance(self.similarities(X), self.k)
