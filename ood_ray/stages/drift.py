"""Stage ``drift``: table ``drift`` (see :mod:`ood_ray.drift.drift_pass`) -- every other split
against this run's reference rows, or every ``ok`` row against the ``--reference`` run's reference
rows (read from its tables, nothing recomputed); skipped when there is neither."""

from __future__ import annotations

import logging
import time
from typing import Any

from ood_ray.stages.base import Stage, StageResult

log = logging.getLogger(__name__)


def _where(split: str | None) -> str:
    if split is None:
        return "status = 'ok'"
    return "status = 'ok' AND split = '" + split.replace("'", "''") + "'"


class DriftStage(Stage):
    name = "drift"
    reads = ("drift", "cluster", "ood")
    writes = ("drift",)
    report_key = "drift"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.drift.enabled

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.query import connect

        reference_con = None
        if ctx.reference is not None:
            reference_con = connect(ctx.reference.out, ctx.reference.run)
            reference_where = _where(ctx.reference.reference_split)
            new_where, described = "status = 'ok'", f"every ok row against run {ctx.reference.run_id}"
        else:
            if ctx.reference_split is None:
                split = ctx.config.ood.reference_split
                log.info("drift skipped: no rows in the reference split %r (and no --reference run)", split)
                return StageResult(report={"skipped": f"no rows in reference split {split!r}"})
            reference_where = ctx.reference_where()
            new_where = f"status = 'ok' AND split IS DISTINCT FROM '{ctx.reference_split.replace(chr(39), chr(39) * 2)}'"
            described = f"every other split against split {ctx.reference_split!r}"
        from ood_ray.drift.drift_pass import run_drift  # after the skip: its imports take most of a second

        structure = ctx.values.get("structure")
        started = time.perf_counter()
        try:
            reference_sampler = ctx.sampler(ctx.reference.files("images")) if ctx.reference is not None else None
            drift = run_drift(ctx.con(), reference_where, new_where, ctx.section(self), [info.alias for info in ctx.infos],
                              structure.model if structure is not None else None, reference_con, ctx.sampler(),
                              reference_sampler)
        finally:
            if reference_con is not None:
                reference_con.close()
        uri = ctx.layout.write_part("drift", "00000", drift, ctx.retry)
        drifted: dict[str, list[str]] = {}
        for row in drift.to_pylist():
            if row["drifted"]:
                drifted.setdefault(row["split"], []).append(f"{row['test']}:{row['feature']}")
        report = {"compared": described, "tests": drift.num_rows, "drifted": sum(len(v) for v in drifted.values()),
                  "drifted_by_split": drifted, "correction": ctx.config.drift.correction, "alpha": ctx.config.drift.alpha,
                  "seconds": round(time.perf_counter() - started, 3)}
        return StageResult(files={"drift": [(uri, drift.num_rows)]}, report=report)
