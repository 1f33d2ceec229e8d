"""Clusters fitted on a sample, applied to every image.

Vectors are L2-normalised first (cosine geometry, as the kNN scores use).

- **k-means**: FAISS's spherical k-means (centroids re-normalised after each step) from seeded
  k-means++ starts, best of three. ``k`` is
  given, or chosen as the ``k`` in ``[k_min, k_max]`` with the largest mean silhouette coefficient
  ``s(i) = (b_i - a_i) / max(a_i, b_i)`` (Rousseeuw 1987; ``a_i`` the mean distance to its own
  cluster, ``b_i`` to the nearest other cluster), computed by scikit-learn on a seeded sample.
- **HDBSCAN** (scikit-learn; Campello et al. 2013): density clusters of the sample; their
  normalised member means serve as centroids so every image can be assigned. HDBSCAN's noise
  points of the sample are clustered like the others (to their nearest centroid).

Every image gets ``cluster`` (nearest centroid), ``cluster_distance`` = ``||x - c||`` of the unit
vectors, and ``score_cluster`` = ``(d - mean_c) / std_c``, the z-score of that distance within its
cluster (mean and std over the fitting sample) -- DataEval's current cluster-outlier rule;
``is_cluster_outlier`` = ``score_cluster > outlier_zscore`` (2.5 by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ood_ray.detectors.knn import l2_normalize

log = logging.getLogger(__name__)


def spherical_kmeans(X: np.ndarray, k: int, niter: int, seed: int, nredo: int = 3) -> np.ndarray:
    """Unit centroids ``(k, D)`` of FAISS's spherical k-means on unit vectors ``X``: ``nredo`` runs,
    each started from k-means++ seeds (Arthur & Vassilvitskii 2007; FAISS's own start is ``k``
    random points, which misses small clusters: on four blobs of 40/40/40/15 points it found the
    small one in only 2 of 3 orderings), the run with the lowest objective kept."""
    import faiss
    from sklearn.cluster import kmeans_plusplus

    X = np.ascontiguousarray(X, dtype=np.float32)
    best, best_objective = None, np.inf
    for run in range(nredo):
        start, _ = kmeans_plusplus(X, k, random_state=seed + run)
        kmeans = faiss.Kmeans(X.shape[1], k, niter=niter, seed=seed + run, spherical=True, verbose=False,
                              # every point is used (no subsampling); small samples are fine (no
                              # "please provide at least 39 points per centroid" warning on stdout)
                              max_points_per_centroid=max(256, len(X) // k + 1), min_points_per_centroid=1)
        kmeans.train(X, init_centroids=np.ascontiguousarray(l2_normalize(start)))
        objective = float(kmeans.obj[-1]) if len(kmeans.obj) else np.inf
        if best is None or objective < best_objective:
            best, best_objective = kmeans.centroids.copy(), objective
    return l2_normalize(best)


def nearest_centroid(X: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(cluster, Euclidean distance)`` of each unit vector to its nearest unit centroid."""
    similarity = X @ centroids.T
    cluster = np.argmax(similarity, axis=1)
    best = similarity[np.arange(len(X)), cluster]
    return cluster.astype(np.int32), np.sqrt(np.maximum(2.0 - 2.0 * best, 0.0)).astype(np.float32)


def silhouette_by_k(X: np.ndarray, ks: range, niter: int, seed: int, sample: int) -> dict[int, float]:
    """Mean silhouette (Euclidean on unit vectors) of spherical k-means for each ``k``."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(X), size=min(sample, len(X)), replace=False) if len(X) > sample else np.arange(len(X))
    scores = {}
    for k in ks:
        if k >= len(rows):
            break
        labels, _ = nearest_centroid(X[rows], spherical_kmeans(X, k, niter, seed))
        scores[k] = float(silhouette_score(X[rows], labels)) if len(set(labels.tolist())) > 1 else -1.0
    return scores


def best_k(scores: dict[int, float]) -> int:
    """The ``k`` with the largest silhouette (the smallest such ``k`` on ties)."""
    return max(scores, key=lambda k: (scores[k], -k))


@dataclass
class ClusterModel:
    """Unit centroids and, per cluster, the mean and std of the sample's distances to them."""

    method: str
    centroids: np.ndarray
    mean_distance: np.ndarray
    std_distance: np.ndarray
    centroid_norm: np.ndarray
    silhouette: dict[int, float] = field(default_factory=dict)

    def assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cluster, cluster_distance, score_cluster)`` of raw (unnormalised) embeddings."""
        cluster, distance = nearest_centroid(l2_normalize(X), self.centroids)
        std = self.std_distance[cluster]
        z = np.where(std > 0, (distance - self.mean_distance[cluster]) / np.where(std > 0, std, 1.0), 0.0)
        return cluster, distance, z.astype(np.float32)

    def report(self) -> dict[str, Any]:
        return {"method": self.method, "k": len(self.centroids),
                "silhouette": {str(k): round(v, 5) for k, v in self.silhouette.items()}}


def _finish(method: str, X: np.ndarray, centroids: np.ndarray, silhouette: dict[int, float]) -> ClusterModel:
    cluster, distance = nearest_centroid(X, centroids)
    k = len(centroids)
    mean = np.zeros(k, np.float32)
    std = np.zeros(k, np.float32)
    norm = np.zeros(k, np.float32)
    for c in range(k):
        members = cluster == c
        if members.any():
            mean[c], std[c] = distance[members].mean(), distance[members].std()
            norm[c] = np.linalg.norm(X[members].mean(axis=0))
    return ClusterModel(method, centroids, mean, std, norm, silhouette)


def fit_clusters(X: np.ndarray, method: str = "kmeans", k: int | None = None, k_min: int = 2, k_max: int = 20,
                 niter: int = 25, seed: int = 0, silhouette_sample: int = 4000, min_cluster_size: int = 10) -> ClusterModel:
    """Fit clusters on a sample of raw embeddings (see module docstring)."""
    X = l2_normalize(X)
    if len(X) < 2:
        raise ValueError(f"clustering needs at least 2 embeddings, got {len(X)}")
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(X)
        found = sorted(set(labels.tolist()) - {-1})
        if not found:
            log.info("HDBSCAN found no cluster in %d points: one cluster of everything", len(X))
            found, labels = [0], np.zeros(len(X), int)
        centroids = l2_normalize(np.stack([X[labels == c].mean(axis=0) for c in found]))
        return _finish("hdbscan", X, centroids, {})
    silhouette: dict[int, float] = {}
    if k is None:
        silhouette = silhouette_by_k(X, range(k_min, k_max + 1), niter, seed, silhouette_sample)
        k = best_k(silhouette) if silhouette else min(k_min, len(X))
        log.info("k-means: k = %d by silhouette (%s)", k, ", ".join(f"{kk}: {v:.3f}" for kk, v in silhouette.items()))
    k = min(k, len(X))
    return _finish("kmeans", X, spherical_kmeans(X, k, niter, seed), silhouette)
