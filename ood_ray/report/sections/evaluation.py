"""Evaluation (after ``ood-ray evaluate``): the metrics table and ROC curves per OOD set, one curve
per score, from the same ID and OOD conditions the evaluation used (``run.json`` ``evaluation``)."""

from __future__ import annotations

from typing import Any

from ood_ray.report import figures
from ood_ray.report.context import ReportContext, roc_curve
from ood_ray.report.sections.base import Section


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    if ctx.table_rows("evaluation") == 0:
        return None
    rows = ctx.rows("SELECT * FROM evaluation ORDER BY ood_set, auroc DESC NULLS LAST, score")
    spec = ctx.run.get("evaluation") or {}
    plots = []
    if spec.get("id") and spec.get("ood_sets"):
        for name, condition in spec["ood_sets"].items():
            curves = []
            for score in spec.get("scores", []):
                curve = roc_curve(ctx, score, spec["id"], condition, ctx.options.roc_points)
                if curve:
                    auroc = next((r["auroc"] for r in rows if r["score"] == score and r["ood_set"] == name), None)
                    label = f"{score} (AUROC {auroc:.3f})" if auroc is not None else score
                    curves.append({"name": label, **curve})
            if curves:
                plots.append({"ood_set": name, "figure": figures.roc(curves, f"ROC: OOD set {name}")})
    columns = list(rows[0]) if rows else []
    return {"rows": rows, "columns": columns, "plots": plots, "id": spec.get("id")}


EVALUATION = Section("evaluation", "Evaluation", collect)
