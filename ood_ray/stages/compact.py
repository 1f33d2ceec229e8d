"""Stage ``compact``: the scanned (and finalized) tables' part files coalesced into files of
about ``io.part_target_mb`` megabytes (:mod:`ood_ray.run.compact`), before the global passes
read them."""

from __future__ import annotations

import logging
from typing import Any

from ood_ray.stages.base import Stage, StageResult

log = logging.getLogger(__name__)


class CompactStage(Stage):
    name = "compact"
    reads = ("io", "ray")

    def enabled(self, ctx: Any) -> bool:
        return ctx.section(self).io.compacts and any(ctx.files.values())

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.run.compact import coalesce_table
        from ood_ray.run.context import pause_point

        cfg = ctx.section(self)
        files, report = {}, {}
        for table, entries in sorted(ctx.files.items()):
            if not entries:
                continue
            files[table], report[table] = coalesce_table(ctx.layout, table, entries, int(cfg.io.part_target_mb * 2**20),
                                                         ctx.retry, cfg.ray.task_num_cpus, local=ctx.local)
            log.info("compact %s: %d parts -> %d (%.1f MB)", table, report[table]["files_before"],
                     report[table]["files_after"], report[table]["bytes"] / 2**20)
        pause_point("compact:written")  # the new parts written, the stage not yet recorded (fault tests)
        return StageResult(files=files, state={"tables": report})
