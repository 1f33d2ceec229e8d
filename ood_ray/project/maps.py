"""2-D maps fitted on a sample of normalised embeddings, then applied to every image.

- **PCA** (always; scikit-learn's ``PCA(2)``): ``[x, y] = (v - mean) @ W^T`` with the two leading
  principal axes ``W`` of the sample -- a linear map, so every image is transformed exactly.
- **UMAP** (option; McInnes et al. 2018, ``umap-learn``): fitted on the sample, every image placed
  by ``UMAP.transform`` (its nearest sample neighbours' embedding).
- **t-SNE** (option; van der Maaten & Hinton 2008, scikit-learn): has no transform, so only the
  images of its own sample (``tsne_sample``) get coordinates; the others are null.

The maps are of the unit vectors (cosine geometry, as the clusters and kNN scores use).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ood_ray.detectors.knn import l2_normalize

log = logging.getLogger(__name__)


@dataclass
class Projections:
    """The fitted maps: PCA's mean and axes, a fitted UMAP, t-SNE's coordinates by ``image_id``."""

    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None
    pca_explained_variance_ratio: list[float] = field(default_factory=list)
    umap: Any = None
    tsne: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return [m for m, present in (("pca", self.pca_components is not None), ("umap", self.umap is not None),
                                     ("tsne", bool(self.tsne))) if present]

    def transform(self, X: np.ndarray, image_ids: list[str]) -> dict[str, np.ndarray]:
        """``{"x_pca": ..., "y_pca": ..., ...}`` for raw embeddings ``X``; NaN where there is none."""
        out: dict[str, np.ndarray] = {}
        U = l2_normalize(X) if len(X) else np.zeros((0, 0), np.float32)
        if self.pca_components is not None:
            xy = (U - self.pca_mean) @ self.pca_components.T if len(U) else np.zeros((0, 2))
            out["x_pca"], out["y_pca"] = xy[:, 0].astype(np.float32), xy[:, 1].astype(np.float32)
        if self.umap is not None:
            xy = self.umap.transform(U) if len(U) else np.zeros((0, 2))
            out["x_umap"], out["y_umap"] = xy[:, 0].astype(np.float32), xy[:, 1].astype(np.float32)
        if self.tsne:
            xy = np.array([self.tsne.get(i, (np.nan, np.nan)) for i in image_ids], np.float32).reshape(-1, 2)
            out["x_tsne"], out["y_tsne"] = xy[:, 0], xy[:, 1]
        return out

    def report(self) -> dict[str, Any]:
        return {"methods": self.methods, "pca_explained_variance_ratio": self.pca_explained_variance_ratio,
                "tsne_points": len(self.tsne)}


def fit_projections(X: np.ndarray, image_ids: list[str], methods: list[str], seed: int = 0,
                    tsne_sample: int = 5000, umap_neighbors: int = 15, perplexity: float = 30.0) -> Projections:
    """Fit the maps named in ``methods`` (PCA always) on a sample of raw embeddings."""
    from sklearn.decomposition import PCA

    U = l2_normalize(X)
    projections = Projections()
    if len(U) >= 2:
        pca = PCA(n_components=2, random_state=seed).fit(U)
        projections.pca_mean = pca.mean_.astype(np.float32)
        projections.pca_components = pca.components_.astype(np.float32)
        projections.pca_explained_variance_ratio = [round(float(v), 5) for v in pca.explained_variance_ratio_]
    if "umap" in methods and len(U) > umap_neighbors + 1:
        import umap

        projections.umap = umap.UMAP(n_neighbors=umap_neighbors, random_state=seed, n_jobs=1).fit(U)
    if "tsne" in methods and len(U) > 3:
        from sklearn.manifold import TSNE

        rows = np.random.default_rng(seed).permutation(len(U))[:tsne_sample]
        xy = TSNE(n_components=2, perplexity=min(perplexity, (len(rows) - 1) / 3.0), random_state=seed,
                  init="pca").fit_transform(U[rows])
        projections.tsne = {image_ids[r]: (float(a), float(b)) for r, (a, b) in zip(rows, xy)}
    log.info("2-D maps fitted on %d embeddings: %s", len(U), ", ".join(projections.methods))
    return projections
