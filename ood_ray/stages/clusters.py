"""Stage ``clusters``: table ``clusters``, one row per cluster with its make-up (size, purity,
labels, splits, outliers), over the final ``images`` parts by Ray tasks (:mod:`ood_ray.cluster.makeup`)."""

from __future__ import annotations

from typing import Any

from ood_ray.stages.base import Stage, StageResult


class ClustersStage(Stage):
    name = "clusters"
    reads = ("cluster",)
    writes = ("clusters",)

    def enabled(self, ctx: Any) -> bool:
        structure = ctx.values.get("structure")
        return structure is not None and structure.clusters is not None

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.cluster.makeup import clusters_table

        model = ctx.values["structure"].clusters
        clusters = clusters_table(ctx.parts(), model.centroid_norm, model.mean_distance, model.std_distance)
        uri = ctx.layout.write_part("clusters", "00000", clusters, ctx.retry)
        return StageResult(files={"clusters": [(uri, clusters.num_rows)]})
