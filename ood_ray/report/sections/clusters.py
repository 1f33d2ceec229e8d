"""Clusters: per cluster its size, purity and majority label, a mosaic of the members nearest its
centre and its outliers (``is_cluster_outlier``, farthest first)."""

from __future__ import annotations

from typing import Any

from ood_ray.report.context import ReportContext
from ood_ray.report.sections.base import Section, share

#: Mosaic members and outliers per cluster.
MEMBERS = 8
OUTLIERS = 4


def _per_cluster(ctx: ReportContext, where: str, order: str, limit: int) -> dict[int, list[dict[str, Any]]]:
    """The first ``limit`` images of each cluster among ``where`` by ``order``, with thumbnails."""
    found: dict[int, list[dict[str, Any]]] = {}
    for row in ctx.rows(
            f"SELECT cluster, image_id, uri, label, cluster_distance FROM images WHERE {where} "
            f"QUALIFY row_number() OVER (PARTITION BY cluster ORDER BY {order}, image_id) <= {limit} "
            f"ORDER BY cluster, {order}, image_id"):
        row["thumb"] = ctx.thumb(row["image_id"], row["uri"])
        found.setdefault(row["cluster"], []).append(row)
    return found


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    if ctx.table_rows("clusters") == 0 or "cluster" not in ctx.image_columns:
        return None
    clusters = ctx.rows("SELECT cluster, size, outliers, n_labels, majority_label, purity, mean_distance "
                        "FROM clusters ORDER BY size DESC, cluster")
    shown = share(ctx.options.thumbnails, 1, MEMBERS + OUTLIERS, len(clusters))
    chosen = [c["cluster"] for c in clusters[:shown]]
    members: dict[int, list[dict[str, Any]]] = {}
    outliers: dict[int, list[dict[str, Any]]] = {}
    if chosen:
        listed = ", ".join(str(int(c)) for c in chosen)
        members = _per_cluster(ctx, f"cluster IN ({listed})", "cluster_distance", MEMBERS)
        if "is_cluster_outlier" in ctx.image_columns:
            outliers = _per_cluster(ctx, f"cluster IN ({listed}) AND is_cluster_outlier", "cluster_distance DESC", OUTLIERS)
    for cluster in clusters:
        cluster["members"] = members.get(cluster["cluster"], [])
        cluster["outlier_examples"] = outliers.get(cluster["cluster"], [])
    structure = ctx.run.get("structure", {}).get("clusters", {})
    return {"clusters": clusters, "method": structure.get("method"), "k": structure.get("k"),
            "model": ctx.run.get("structure", {}).get("model"), "mosaics": len(chosen)}


CLUSTERS = Section("clusters", "Clusters", collect)
