"""Drift: every test with the drifted ones highlighted, and for each drifted statistic of this run
the reference split's distribution against the drifted split's."""

from __future__ import annotations

from typing import Any

from ood_ray.report import figures
from ood_ray.report.context import ReportContext, histogram, ident, quote
from ood_ray.report.sections.base import Section

#: Tests listed, drifted first; distributions drawn.
TESTS_MAX = 500
FIGURES_MAX = 12


def collect(ctx: ReportContext) -> dict[str, Any] | None:
    if ctx.table_rows("drift") == 0:
        return None
    tests = ctx.rows(f"SELECT split, test, feature, model, statistic, p_value, threshold, drifted, n_reference, n_new "
                     f"FROM drift ORDER BY drifted DESC, p_value, split, test, feature LIMIT {TESTS_MAX}")
    drifted = int(ctx.value("SELECT count(*) FILTER (WHERE drifted) FROM drift"))
    total = int(ctx.value("SELECT count(*) FROM drift"))
    info = ctx.run.get("drift", {})
    reference = ctx.reference_split
    in_run = reference is not None and str(info.get("compared", "")).startswith("every other split")
    columns = ctx.numeric_columns  # a drifted label (new classes) has no histogram
    plots, seen = [], set()
    if in_run:
        for test in tests:
            key = (test["split"], test["feature"])
            if (not test["drifted"] or test["model"] is not None or test["feature"] not in columns or key in seen
                    or len(plots) >= FIGURES_MAX):
                continue
            seen.add(key)
            new = test["split"]
            groups = {f"reference ({reference})": f"split = {quote(reference)}",
                      f"{new}": "split IS NULL" if new is None else f"split = {quote(new)}"}
            hist = histogram(ctx, ident(test["feature"]), "status = 'ok'", groups, ctx.options.bins)
            if hist:
                plots.append({"split": new, "feature": test["feature"],
                              "figure": figures.histogram(hist, f"{test['feature']}: {reference} vs {new}", test["feature"])})
    return {"tests": tests, "drifted": drifted, "total": total, "compared": info.get("compared"),
            "listed": len(tests), "plots": plots, "in_run": in_run}


DRIFT = Section("drift", "Drift", collect)
