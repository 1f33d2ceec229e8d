"""Clusters: per cluster its size, purity and majority label, a mosaic of the members nearest its
centre and its outliers (``is_cluster_outlier``, farthest first)."""

from __future__ import annotations

from typing import Any

from ood_ray.report.context import ReportContext
from ood_ray.report.sections.base import Section, share

#: Mosaic members and outliers per cluster.
MEMBERS = 8
OUTLIERS = 4


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
        for row in ctx.rows(
                f"SELECT cluster, image_id, uri, label, cluster_distance FROM images WHERE cluster IN ({listed}) "
                f"QUALIFY row_number() OVER (PARTITION BY cluster ORDER BY cluster_distance, image_id) <= {MEMBERS} "
                f"ORDER BY cluster, cluster_distance, image_id"):
            row["thumb"] = ctx.thumb(row["image_id"], row["uri"])
            members.setdefault(row["cluster"], []).append(row)
        if "is_cluster_outlier" in ctx.image_columns:
            for row in ctx.rows(
                    f"SELECT cluster, image_id, uri, label, cluster_distance FROM images WHERE cluster IN ({listed}) "
                    f"AND is_cluster_outlier QUALIFY row_number() OVER (PARTITION BY cluster "
                    f"ORDER BY cluster_distance DESC, image_id) <= {OUTLIERS} ORDER BY cluster, cluster_distance DESC"):
                row["thumb"] = ctx.thumb(row["image_id"], row["uri"])
                outliers.setdefault(row["cluster"], []).append(row)
    for cluster in clusters:
        cluster["members"] = members.get(cluster["cluster"], [])
        cluster["outlier_examples"] = outliers.get(cluster["cluster"], [])
    structure = ctx.run.get("structure", {}).get("clusters", {})
    return {"clusters": clusters, "method": structure.get("method"), "k": structure.get("k"),
            "model": ctx.run.get("structure", {}).get("model"), "mosaics": len(chosen)}


CLUSTERS = Section("clusters", "Clusters", collect)
