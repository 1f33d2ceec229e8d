"""The lint pass: thresholds per metric (optionally per class) and the ``lint`` table of flags.

Nothing here holds the data on the driver. The thresholds come from exact, mergeable summaries of
the ``ok`` rows (:mod:`ood_ray.lint.summaries`), computed part by part (:mod:`ood_ray.parts`: Ray
tasks over the run's part files in an audit, in-memory tables in tests) in eight passes over the
metric columns:

1. per (scope, metric): count, exact sum, and the top 16 bits of every value's sort key;
2.-4. the next 16 bits inside the buckets that hold the quartiles' and median's ranks (and, in the
   first of them, the exact sum of squared deviations from the mean);
5.-8. the same for ``|x - median|`` (the MAD) and its exact sum (the mean absolute deviation).

The summaries equal NumPy's on the whole column (quartiles, median and MAD to the last bit; mean
and population std are exact sums rounded once), for any split into parts. :func:`ood_ray.lint.thresholds.compute_bounds`
turns them into bounds; a last pass emits a row per flag (written part by part). Metrics whose
spread is zero get no bounds and are reported as skipped. Every threshold used is returned for
``run.json``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.config import LintConfig
from ood_ray.parts import Parts
from ood_ray.lint.summaries import (
    NO_BUCKETS,
    ExactSum,
    OrderStatistic,
    bucket_counts,
    empty_summaries,
    float_keys,
    interpolate,
    median_ranks,
    merge_summaries,
    middle,
    quantile_ranks,
    refine_searches,
)
from ood_ray.lint.thresholds import MetricSummary, compute_bounds
from ood_ray.stats.image import IMAGE_STAT_NAMES
from ood_ray.tables import LINT_SCHEMA

log = logging.getLogger(__name__)

#: The ``scope`` of thresholds computed over the whole dataset (per-class scopes are labels).
ALL_SCOPE = "all"
UNLABELLED_SCOPE = "(none)"
QUANTILES = (0.25, 0.5, 0.75)


# -- per part (runs in the workers) -------------------------------------------------------------

def _scopes(table: pa.Table, per_class: bool) -> dict[str, np.ndarray]:
    """``{scope: row mask}`` of the ``ok`` rows of one part."""
    ok = np.asarray(pc.fill_null(pc.equal(table.column("status"), "ok"), False))
    if not per_class:
        return {ALL_SCOPE: ok}
    labels = np.asarray(pc.fill_null(table.column("label").cast(pa.string()), UNLABELLED_SCOPE).to_pylist(), dtype=object)
    return {str(label): ok & (labels == label) for label in set(labels[ok].tolist())}


def _values(table: pa.Table, metric: str, mask: np.ndarray) -> np.ndarray:
    values = table.column(metric).cast(pa.float64()).to_numpy(zero_copy_only=False)[mask]
    return values[~np.isnan(values)]


def compute_pass(table: pa.Table, spec: dict[str, Any]) -> dict[str, Any]:
    """What one part contributes to a pass (see :func:`summarize_metrics` for ``spec``)."""
    out: dict[str, Any] = {"n": {}, "sums": {}, "buckets": {}}
    targets_of: dict[str, list[tuple[str, str, int, int]]] = {}
    for target, (t_key, transform, prefix, level) in spec["targets"].items():
        targets_of.setdefault(t_key, []).append((target, transform, prefix, level))
    for scope, mask in _scopes(table, spec["per_class"]).items():
        for metric in spec["metrics"]:
            key = f"{scope}\x00{metric}"
            x = _values(table, metric, mask)
            keys: dict[str, np.ndarray] = {}
            if key in spec["medians"]:
                deviations = np.abs(x - spec["medians"][key])
            if spec["stage"] == "moments":
                keys["value"] = float_keys(x)
                out["n"][key] = int(x.size)
                out["sums"][key] = ExactSum().add(x).to_state()
                out["buckets"][key] = bucket_counts(keys["value"], 0, 0)
            elif spec["stage"] == "squares" and key in spec["means"]:
                with np.errstate(over="ignore"):  # squares beyond float64 sum to inf, as in NumPy
                    out["sums"][key] = ExactSum().add((x - spec["means"][key]) ** 2).to_state()
            elif spec["stage"] == "deviations" and key in spec["medians"]:
                keys["deviation"] = float_keys(deviations)
                out["sums"][key] = ExactSum().add(deviations).to_state()
                out["buckets"][key] = bucket_counts(keys["deviation"], 0, 0)
            for target, transform, prefix, level in targets_of.get(key, ()):
                if transform not in keys:
                    keys[transform] = float_keys(deviations if transform == "deviation" else x)
                out["buckets"][target] = bucket_counts(keys[transform], prefix, level)
    return out


def _columns(spec: dict[str, Any]) -> list[str]:
    return ["image_id", "status", "label", *(spec.get("metrics") or spec.get("bounds", {}))]


def run_pass(parts: Parts, spec: dict[str, Any]) -> dict[str, Any]:
    """One pass over every part (``spec`` as :func:`compute_pass` reads it), merged."""
    return parts.merge(compute_pass, spec, _columns(spec), merge_summaries, empty_summaries)


def flag_rows(table: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """The ``lint`` rows of one part: every (image, metric) outside its scope's bounds, with its
    ``severity = |value - centre| / half-width`` of the bounds (1 at a bound, 2 twice as far out;
    for ``zscore`` and ``modzscore`` that is the score over the threshold)."""
    rows: dict[str, list] = {f.name: [] for f in LINT_SCHEMA}
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
    for scope, mask in _scopes(table, spec["per_class"]).items():
        for metric, bounds in spec["bounds"].items():
            if scope not in bounds:
                continue
            lower, upper, method, threshold = bounds[scope]
            values = table.column(metric).cast(pa.float64()).to_numpy(zero_copy_only=False)
            hit = mask & ~np.isnan(values) & ((values < lower) | (values > upper))
            centre, half_width = (lower + upper) / 2, (upper - lower) / 2
            for i in np.flatnonzero(hit):
                rows["severity"].append(float(abs(values[i] - centre) / half_width) if half_width > 0 else float("inf"))
                rows["image_id"].append(ids[i])
                rows["metric"].append(metric)
                rows["value"].append(float(values[i]))
                rows["lower"].append(lower)
                rows["upper"].append(upper)
                rows["method"].append(method)
                rows["threshold"].append(float(threshold))
                rows["scope"].append(scope)
    return pa.Table.from_pydict(rows, schema=LINT_SCHEMA)


# -- on the driver: bounded state ---------------------------------------------------------------

def _order_statistics(parts: Parts, base: dict[str, Any], searches: dict[str, OrderStatistic],
                      targets: dict[str, tuple[str, str]], extra: dict[str, Any]) -> dict[str, Any]:
    """Refine ``searches`` (level 0 already resolved) to full keys; returns the merged extras of
    the first refinement pass (``extra`` describes what else it computes)."""
    def one_pass(open_targets: dict[str, tuple], round_: int) -> dict[str, Any]:
        return run_pass(parts, {**base, **(extra if round_ == 0 else {"stage": "refine"}), "targets": open_targets})

    return refine_searches(searches, targets, one_pass)


def summarize_metrics(parts: Parts, metrics: list[str], per_class: bool) -> dict[tuple[str, str], MetricSummary]:
    """``{(scope, metric): MetricSummary}`` over the ``ok`` rows (see module docstring)."""
    base = {"metrics": metrics, "per_class": per_class, "means": {}, "medians": {}}
    # 1. counts, exact sums, top 16 bits of every value
    first = run_pass(parts, {**base, "stage": "moments", "targets": {}})
    keys = sorted(k for k, n in first["n"].items() if n > 0)
    counts = {k: first["n"][k] for k in keys}
    means = {k: first["sums"][k].divided(counts[k]) for k in keys}
    targets: dict[str, tuple[str, str]] = {}
    searches: dict[str, OrderStatistic] = {}
    plan: dict[str, dict[float, tuple[str, str, float]]] = {}
    for k in keys:
        for q in QUANTILES:
            low, high, weight = quantile_ranks(counts[k], q) if q != 0.5 else (*median_ranks(counts[k]), None)
            names = (f"{k}\x00v{q}\x00lo", f"{k}\x00v{q}\x00hi")
            for name, rank in zip(names, (low, high)):
                targets[name], searches[name] = (k, "value"), OrderStatistic(rank)
            plan.setdefault(k, {})[q] = (*names, weight)
    for name, search in searches.items():
        search.refine(first["buckets"].get(targets[name][0], NO_BUCKETS))
    # 2.-4. the next bits of the quartiles and the median; the squared deviations from the mean
    squares = _order_statistics(parts, base, searches, targets, {"stage": "squares", "means": means})
    quantiles = {k: {q: middle(searches[lo].value, searches[hi].value) if w is None
                     else interpolate(searches[lo].value, searches[hi].value, w) for q, (lo, hi, w) in by_q.items()}
                 for k, by_q in plan.items()}
    medians = {k: quantiles[k][0.5] for k in keys}
    # 5.-8. the MAD and the mean absolute deviation from the median
    mad_targets, mad_searches, mad_plan = {}, {}, {}
    for k in keys:
        names = (f"{k}\x00mad\x00lo", f"{k}\x00mad\x00hi")
        for name, rank in zip(names, median_ranks(counts[k])):
            mad_targets[name], mad_searches[name] = (k, "deviation"), OrderStatistic(rank)
        mad_plan[k] = names
    base["medians"] = medians
    level0 = run_pass(parts, {**base, "stage": "deviations", "targets": {}})
    for name, search in mad_searches.items():
        search.refine(level0["buckets"].get(mad_targets[name][0], NO_BUCKETS))
    _order_statistics(parts, base, mad_searches, mad_targets, {"stage": "refine"})
    summaries = {}
    for k in keys:
        scope, metric = k.split("\x00")
        n = counts[k]
        variance = squares["sums"][k].divided(n) if k in squares.get("sums", {}) else 0.0
        lo, hi = mad_plan[k]
        summaries[(scope, metric)] = MetricSummary(
            n=n, mean=means[k], std=float(np.sqrt(variance)), median=medians[k],
            mad=middle(mad_searches[lo].value, mad_searches[hi].value),
            mean_abs_dev=level0["sums"][k].divided(n), q1=quantiles[k][0.25], q3=quantiles[k][0.75])
    return summaries


def run_lint(parts: Parts, config: LintConfig) -> tuple[Any, dict[str, Any]]:
    """Flags of every metric (``lint`` parts written by the tasks, or a table for in-memory parts) and the
    thresholds used: ``{metric: {scope: {method, threshold, n, lower, upper | skipped}}}``."""
    metrics = list(config.metrics or IMAGE_STAT_NAMES)
    summaries = summarize_metrics(parts, metrics, config.per_class)
    used: dict[str, Any] = {}
    bounds: dict[str, dict[str, tuple]] = {}
    for (scope, metric), summary in sorted(summaries.items()):
        method, multiplier = config.rule_for(metric)
        entry: dict[str, Any] = {"method": method, "threshold": multiplier, "n": summary.n}
        found = compute_bounds(summary, method, multiplier)
        if found is None:
            entry["skipped"] = "zero spread"
        else:
            entry["lower"], entry["upper"] = found
            bounds.setdefault(metric, {})[scope] = (*found, method, multiplier)
        used.setdefault(metric, {})[scope] = entry
    spec = {"per_class": config.per_class, "bounds": bounds}
    flags = parts.write(flag_table, spec, _columns(spec), "lint")
    return flags, used


def flag_table(tables: list[pa.Table], spec: dict[str, Any]) -> pa.Table:
    """The flags of some parts, ordered by metric and image."""
    flags = [flag_rows(table, spec) for table in tables]
    table = pa.concat_tables(flags) if flags else LINT_SCHEMA.empty_table()
    return table.sort_by([("metric", "ascending"), ("image_id", "ascending")])
