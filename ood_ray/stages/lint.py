"""Stage ``lint``: extreme values -- thresholds per statistic over the ``ok`` rows, from exact
mergeable summaries computed by Ray tasks over the written ``images`` parts
(:mod:`ood_ray.lint.linter`), and table ``lint``, one row per flag, written by those tasks."""

from __future__ import annotations

from typing import Any

from ood_ray.stages.base import Stage, StageResult


class LintStage(Stage):
    name = "lint"
    reads = ("lint", "ray")
    writes = ("lint",)
    report_key = "lint_thresholds"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.lint.enabled

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.lint.linter import run_lint
        from ood_ray.tables import LINT_SCHEMA

        cfg = ctx.section(self)
        parts = ctx.parts()
        files, thresholds = run_lint(parts, cfg.lint)
        if not files:  # no flags: one empty part, so that the table exists and reads as empty
            files = [(ctx.layout.write_part("lint", "00000", LINT_SCHEMA.empty_table(), ctx.retry), 0)]
        return StageResult(files={"lint": files}, report=thresholds)
