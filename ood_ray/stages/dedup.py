"""Stage ``dedup``: duplicate groups -- exact by ``hash_pixels``, near by perceptual hashes
(:mod:`ood_ray.dedup.hash_groups`: a hash-partitioned join in Ray tasks over the ``images`` parts), and with models near by embedding: the kNN stage's candidate
pairs, made unique (table ``duplicate_pairs``) and grouped by union-find
(:mod:`ood_ray.dedup.embedding_groups`). Table ``duplicates``, one row per member."""

from __future__ import annotations

from typing import Any

from ood_ray.stages.base import Stage, StageResult


class DedupStage(Stage):
    name = "dedup"
    reads = ("dedup", "ray")
    writes = ("duplicates", "duplicate_pairs")
    report_key = "dedup"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.dedup.enabled

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.dedup.embedding_groups import embedding_groups, unique_pairs
        from ood_ray.dedup.hash_groups import run_dedup
        from ood_ray.query import register_table

        con = ctx.con()
        files: dict[str, list[tuple[str, int]]] = {}
        groups = None
        if ctx.staged.get("pairs"):
            register_table(con, "_pairs", ctx.staged["pairs"])
            pairs = unique_pairs(con)
            files["duplicate_pairs"] = [(ctx.layout.write_part("duplicate_pairs", "00000", pairs, ctx.retry), pairs.num_rows)]
            groups = embedding_groups(pairs)
        cfg = ctx.section(self)
        parts = ctx.parts()
        duplicates, summary = run_dedup(parts, cfg.dedup, ctx.inputs.num_rows, groups)
        files["duplicates"] = [(ctx.layout.write_part("duplicates", "00000", duplicates, ctx.retry), duplicates.num_rows)]
        return StageResult(files=files, report=summary)
