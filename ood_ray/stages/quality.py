"""Stage ``quality``: the dataset-relative named issue and the count of every named issue.

The scan wrote the absolute issues' ``score_<issue>`` / ``is_<issue>`` (:mod:`ood_ray.lint.issues`).
``odd_size`` needs the dataset: the exact quartiles of ``sqrt(w) sqrt(h)`` over the ``ok`` rows
come from the lint summaries (:func:`ood_ray.lint.linter.summarize_metrics`, four passes of Ray
tasks over two integer columns), then one Ray task per ``images`` part rewrites it with
``score_odd_size`` and ``is_odd_size`` (a pass over the table, after ``compact`` so that it
rewrites few large files; the files stay as ``compact`` left them), and a last pass counts every
issue's flags (and ``is_label_issue``'s) for ``run.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.lint.issues import ISSUES, odd_size_bounds, odd_size_score
from ood_ray.stages.base import Stage, StageResult
from ood_ray.stats.quality import image_area_sqrt

_ODD_SIZE = ISSUES["odd_size"]


def add_odd_size(tables: list[pa.Table], spec: dict[str, Any]) -> pa.Table:
    """``tables`` as one, with ``score_odd_size`` and ``is_odd_size`` (null where not ``ok``)."""
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    table = table.drop_columns([c for c in (_ODD_SIZE.score_column, _ODD_SIZE.flag_column) if c in table.column_names])
    n = table.num_rows
    ok = np.asarray(pc.fill_null(pc.equal(table.column("status"), "ok"), False))
    width = table.column("width").cast(pa.float64()).to_numpy(zero_copy_only=False)
    height = table.column("height").cast(pa.float64()).to_numpy(zero_copy_only=False)
    valid = ok & ~np.isnan(width) & ~np.isnan(height)
    scores = np.zeros(n)
    if spec.get("mid") is not None and valid.any():
        scores[valid] = odd_size_score(image_area_sqrt(width[valid], height[valid]), spec["mid"], spec["norm"])
    else:
        valid[:] = False
    table = table.append_column(pa.field(_ODD_SIZE.score_column, pa.float64()), pa.array(scores, mask=~valid))
    return table.append_column(pa.field(_ODD_SIZE.flag_column, pa.bool_()),
                               pa.array(scores > spec.get("threshold", 1.0), mask=~valid))


#: the label issue (set by finalize, :mod:`ood_ray.stages.label_issues`), counted with the named ones
LABEL_ISSUE_FLAG = "is_label_issue"


def count_flags(table: pa.Table, spec: dict[str, Any]) -> dict[str, int]:
    """``{issue: flagged rows}`` of one part (``label_issue`` too when the run has it)."""
    flags = {name: ISSUES[name].flag_column for name in ISSUES} | {"label_issue": LABEL_ISSUE_FLAG}
    return {name: int(pc.sum(pc.cast(table.column(column), pa.int64())).as_py() or 0)
            for name, column in flags.items() if column in table.column_names}


def add_counts(total: dict[str, int], part: dict[str, int]) -> dict[str, int]:
    for name, count in part.items():
        total[name] = total.get(name, 0) + count
    return total


class QualityStage(Stage):
    name = "quality"
    reads = ("quality", "ray")
    writes = ("images",)
    report_key = "quality"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.quality.enabled and bool(ctx.images_uris())

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.lint.linter import summarize_metrics

        cfg = ctx.section(self).quality
        parts = ctx.parts()
        summaries = summarize_metrics(parts, ["image_area_sqrt"], False, dispersion=False)
        size = summaries.get(("all", "image_area_sqrt"))
        spec: dict[str, Any] = {}
        odd_size: dict[str, Any] = {"iqr_factor": cfg.odd_size_iqr_factor}
        if size is not None:
            mid, norm = odd_size_bounds(size.q1, size.q3, cfg.odd_size_iqr_factor)
            # CleanVision: when the quartiles coincide every size but theirs is odd (threshold 0).
            threshold = cfg.threshold("odd_size") if size.q3 > size.q1 else 0.0
            spec = {"mid": mid, "norm": norm, "threshold": threshold}
            odd_size.update(q1=size.q1, q3=size.q3, mid=mid, norm=norm, threshold=threshold,
                            lower=mid - threshold * norm, upper=mid + threshold * norm)
        files = parts.write(add_odd_size, spec, None, "images", prefix="q", one_per_part=True)
        labelled = bool(ctx.states.get("label_issues", {}).get("label_model"))
        flagged = ctx.parts([uri for uri, _ in files]).merge(
            count_flags, {}, ["status", *(issue.flag_column for issue in ISSUES.values()), *([LABEL_ISSUE_FLAG] if labelled else [])],
            add_counts, dict)
        report = {"thresholds": {name: odd_size.get("threshold", cfg.threshold(name)) if name == "odd_size"
                                 else cfg.threshold(name) for name in ISSUES},
                  "flagged": {name: int(flagged.get(name, 0)) for name in ISSUES}, "odd_size": odd_size}
        if labelled:
            report["flagged"]["label_issue"] = int(flagged.get("label_issue", 0))
        return StageResult(files={"images": files}, report=report)
