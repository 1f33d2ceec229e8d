"""Stage ``clusters``: table ``clusters``, one row per cluster with its make-up (size, purity,
labels, splits, outliers), over the final ``images`` (:func:`ood_ray.structure.clusters_table`)."""

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
        from ood_ray.structure import clusters_table

        clusters = clusters_table(ctx.con(), ctx.values["structure"].clusters)
        uri = ctx.layout.write_part("clusters", "00000", clusters, ctx.retry)
        return StageResult(files={"clusters": [(uri, clusters.num_rows)]})
