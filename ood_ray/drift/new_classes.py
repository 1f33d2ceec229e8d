"""New-class detection: do the new data bring clusters the reference does not have?

The autoencoder-drift seed clusters embeddings and reads the number of classes off the silhouette
coefficient. Done soundly here -- one space for fitting and scoring (the unit embeddings of one
model), the same k range and seed on both sides:

1. ``k_ref``: the silhouette-best k of spherical k-means on a reference sample alone;
   ``k_all``: the same on the reference sample plus a new sample. ``k_all > k_ref`` suggests the
   new data add structure.
2. Which clusters of the joint clustering are new: a new image has *no reference member nearby*
   when its distance to the nearest reference image exceeds ``r95``, the 95% quantile of the
   reference images' own nearest-other-reference distances. A cluster is new when at least half of
   its new members are such images (and it has at least ``min_size`` new members).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ood_ray.cluster.kmeans import (
    best_k,
    nearest_centroid,
    silhouette_by_k,
    spherical_kmeans,
)
from ood_ray.detectors.knn import l2_normalize


@dataclass
class NewClassReport:
    k_reference: int
    k_combined: int
    silhouette_reference: dict[int, float]
    silhouette_combined: dict[int, float]
    reference_radius: float
    #: one entry per joint cluster: (cluster, n_reference, n_new, share of new members with no reference nearby)
    clusters: list[tuple[int, int, int, float]] = field(default_factory=list)
    new_clusters: list[int] = field(default_factory=list)


def _nearest_distance(queries: np.ndarray, reference: np.ndarray, leave_one_out: bool) -> np.ndarray:
    similarity = queries @ reference.T
    if leave_one_out:
        np.fill_diagonal(similarity, -np.inf)
    return np.sqrt(np.maximum(2.0 - 2.0 * similarity.max(axis=1), 0.0))


def detect_new_classes(reference: np.ndarray, new: np.ndarray, k_min: int = 2, k_max: int = 20, niter: int = 25,
                       seed: int = 0, silhouette_sample: int = 4000, min_size: int = 5,
                       share: float = 0.5) -> NewClassReport:
    """Compare the cluster structure of ``reference`` and ``reference + new`` (raw embeddings)."""
    R, N = l2_normalize(reference), l2_normalize(new)
    if len(R) < 3 or len(N) < 1:
        raise ValueError(f"new-class detection needs >= 3 reference and >= 1 new embeddings, got {len(R)} and {len(N)}")
    ks = range(k_min, k_max + 1)
    sil_ref = silhouette_by_k(R, ks, niter, seed, silhouette_sample)
    both = np.concatenate([R, N])
    sil_all = silhouette_by_k(both, ks, niter, seed, silhouette_sample)
    k_ref, k_all = best_k(sil_ref), best_k(sil_all)
    radius = float(np.quantile(_nearest_distance(R, R, leave_one_out=True), 0.95))
    far = _nearest_distance(N, R, leave_one_out=False) > radius
    labels, _ = nearest_centroid(both, spherical_kmeans(both, k_all, niter, seed))
    report = NewClassReport(k_ref, k_all, sil_ref, sil_all, radius)
    ref_labels, new_labels = labels[: len(R)], labels[len(R):]
    for c in range(k_all):
        members = new_labels == c
        n_new = int(members.sum())
        far_share = float(far[members].mean()) if n_new else 0.0
        report.clusters.append((c, int((ref_labels == c).sum()), n_new, far_share))
        if n_new >= min_size and far_share >= share:
            report.new_clusters.append(c)
    return report
