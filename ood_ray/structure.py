"""The structure passes of a run with models: clusters and 2-D maps (fit on the driver, applied
in the finalize stage), and table ``clusters`` (DuckDB over the final ``images``).

The cluster model is ``cluster.model`` (default: the first model). One seeded sample of up to
``max(cluster.sample_size, project.sample_size)`` ``ok`` rows of every split fits both the clusters
(:mod:`ood_ray.cluster.kmeans`) and the maps (:mod:`ood_ray.project.maps`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ood_ray.cluster.kmeans import ClusterModel, fit_clusters
from ood_ray.columns import EMBEDDING_PREFIX, embedding_matrix
from ood_ray.config import AuditConfig
from ood_ray.sampling import Sampler, hash_order
from ood_ray.project.maps import Projections, fit_projections

log = logging.getLogger(__name__)


@dataclass
class StructureFit:
    model: str | None = None
    clusters: ClusterModel | None = None
    projections: Projections | None = None
    report: dict[str, Any] = field(default_factory=dict)


def cluster_model_alias(config: AuditConfig, aliases: list[str]) -> str | None:
    if not aliases:
        return None
    return config.cluster.model or aliases[0]


def _sample(sampler: Sampler, column: str, limit: int, seed: int) -> tuple[list[str], np.ndarray]:
    table = sampler.select([column], f"""status = 'ok' AND "{column}" IS NOT NULL""",
                           hash_order(f"structure{int(seed)}"), limit)
    if table.num_rows == 0:
        return [], np.zeros((0, 0), np.float32)
    return table.column("image_id").to_pylist(), embedding_matrix(table.column(column))[1]


def fit_structure(sampler: Sampler, config: AuditConfig, aliases: list[str]) -> StructureFit:
    """Clusters and maps of the cluster model, fitted on one sample of the staged rows."""
    import time

    fit = StructureFit(model=cluster_model_alias(config, aliases))
    if fit.model is None:
        return fit
    cluster, project = config.cluster, config.project
    started = time.perf_counter()
    ids, X = _sample(sampler, f"{EMBEDDING_PREFIX}{fit.model}", max(cluster.sample_size, project.sample_size), cluster.seed)
    fit.report = {"model": fit.model, "sample": len(ids)}
    sampled = time.perf_counter()
    if len(X) < 3:
        log.info("clusters and maps skipped: %d embeddings of %s", len(X), fit.model)
        fit.report["skipped"] = f"{len(X)} embeddings"
        return fit
    if cluster.enabled:
        rows = X[: cluster.sample_size]
        fit.clusters = fit_clusters(rows, cluster.method, cluster.k, cluster.k_min, min(cluster.k_max, len(rows) - 1),
                                    cluster.niter, cluster.seed, cluster.silhouette_sample, cluster.hdbscan_min_cluster_size)
        fit.report["clusters"] = {**fit.clusters.report(), "sample": len(rows),
                                  "seconds": round(time.perf_counter() - sampled, 3)}
    projected = time.perf_counter()
    fit.projections = fit_projections(X[: project.sample_size], ids[: project.sample_size], project.methods, project.seed,
                                      project.tsne_sample, project.umap_neighbors, project.tsne_perplexity)
    fit.report["projections"] = {**fit.projections.report(), "sample": min(len(X), project.sample_size),
                                 "seconds": round(time.perf_counter() - projected, 3)}
    fit.report["sample_seconds"] = round(sampled - started, 3)
    return fit


def structure_state(fit: StructureFit) -> dict[str, Any]:
    """The reusable part of a fit as JSON-safe lists: k-means centroids and per-cluster distance
    statistics, PCA's mean and axes (UMAP and t-SNE are refitted: they have no safe, portable state)."""
    state: dict[str, Any] = {"model": fit.model}
    if fit.clusters is not None:
        c = fit.clusters
        state["clusters"] = {"method": c.method, "centroids": c.centroids.tolist(), "mean_distance": c.mean_distance.tolist(),
                             "std_distance": c.std_distance.tolist(), "centroid_norm": c.centroid_norm.tolist(),
                             "silhouette": {str(k): v for k, v in c.silhouette.items()}}
    if fit.projections is not None and fit.projections.pca_components is not None:
        p = fit.projections
        state["pca"] = {"mean": p.pca_mean.tolist(), "components": p.pca_components.tolist(),
                        "explained_variance_ratio": p.pca_explained_variance_ratio}
    return state


def load_structure(state: dict[str, Any], sampler: Sampler, config: AuditConfig, source: str) -> StructureFit:
    """A saved fit (:func:`structure_state`) applied to new data: the reference's clusters and PCA
    axes, so ``cluster`` and ``x_pca`` mean the same as in the reference run; UMAP / t-SNE (when
    configured) are fitted on the new data."""
    fit = StructureFit(model=state["model"], report={"model": state["model"], "from": source})
    if "clusters" in state:
        c = state["clusters"]
        fit.clusters = ClusterModel(c["method"], np.asarray(c["centroids"], np.float32), np.asarray(c["mean_distance"], np.float32),
                                    np.asarray(c["std_distance"], np.float32), np.asarray(c["centroid_norm"], np.float32),
                                    {int(k): v for k, v in c.get("silhouette", {}).items()})
        fit.report["clusters"] = fit.clusters.report()
    projections = Projections()
    if "pca" in state:
        projections.pca_mean = np.asarray(state["pca"]["mean"], np.float32)
        projections.pca_components = np.asarray(state["pca"]["components"], np.float32)
        projections.pca_explained_variance_ratio = state["pca"]["explained_variance_ratio"]
    others = [m for m in config.project.methods if m != "pca"]
    if others:
        project = config.project
        ids, X = _sample(sampler, f"{EMBEDDING_PREFIX}{fit.model}", project.sample_size, project.seed)
        if len(X) >= 3:
            refit = fit_projections(X, ids, others, project.seed, project.tsne_sample, project.umap_neighbors, project.tsne_perplexity)
            projections.umap, projections.tsne = refit.umap, refit.tsne
    fit.projections = projections
    fit.report["projections"] = projections.report()
    return fit
