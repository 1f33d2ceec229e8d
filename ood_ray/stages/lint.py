"""Stage ``lint``: extreme values -- thresholds per statistic over the ``ok`` rows (DuckDB over the
written ``images``, :mod:`ood_ray.lint.linter`) and table ``lint``, one row per flag."""

from __future__ import annotations

from typing import Any

from ood_ray.stages.base import Stage, StageResult


class LintStage(Stage):
    name = "lint"
    reads = ("lint",)
    writes = ("lint",)
    report_key = "lint_thresholds"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.lint.enabled

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.lint.linter import run_lint

        lint, thresholds = run_lint(ctx.con(), ctx.section(self).lint)
        uri = ctx.layout.write_part("lint", "00000", lint, ctx.retry)
        return StageResult(files={"lint": [(uri, lint.num_rows)]}, report=thresholds)
