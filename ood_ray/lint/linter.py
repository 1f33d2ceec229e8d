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

from ood_ray.config import LINT_SIDE_BOUNDS, LintConfig
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
from ood_ray.stats.pixels import PERCENTILE_NAMES
from ood_ray.stats.quality import image_area_sqrt
from ood_ray.tables import LINT_SCHEMA

log = logging.getLogger(__name__)

#: Statistics kept in ``images`` but not linted by default: the five pixel percentiles (``p25``/``p75``
#: are ``brightness``/``darkness`` already; DataEval 1.1 lints none of them) and ``edge_p99``, which
#: a dark, low-contrast picture also lowers (``edge_contrast`` is its exposure-free form).
#: ``lint.metrics`` adds them back.
UNLINTED_BY_DEFAULT: frozenset[str] = frozenset((*PERCENTILE_NAMES, "edge_p99"))
#: The statistics linted by default.
DEFAULT_LINT_METRICS: tuple[str, ...] = tuple(name for name in IMAGE_STAT_NAMES if name not in UNLINTED_BY_DEFAULT)

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


#: Metrics computed from other columns: ``{name: (columns, fn(table) -> float64[n])}``.
DERIVED_METRICS: dict[str, tuple[tuple[str, ...], Any]] = {
    "image_area_sqrt": (("width", "height"), lambda t: image_area_sqrt(_column(t, "width"), _column(t, "height"))),
}


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)


#: The floor of a log-scale statistic: ``ln(max(x, 2^-16))`` (below any nonzero 16-bit level step).
LOG_FLOOR = 2.0 ** -16


def to_scale(values: np.ndarray, log: bool) -> np.ndarray:
    """``values`` on the scale their thresholds live on: ``ln(max(x, LOG_FLOOR))`` or as they are."""
    if not log:
        return values
    with np.errstate(invalid="ignore"):
        return np.log(np.maximum(values, LOG_FLOOR))


def from_scale(value: float, log: bool) -> float:
    return float(np.exp(value)) if log else float(value)


def _values(table: pa.Table, metric: str, mask: np.ndarray, log: bool = False) -> np.ndarray:
    values = DERIVED_METRICS[metric][1](table) if metric in DERIVED_METRICS else _column(table, metric)
    values = to_scale(values[mask], log)
    return values[~np.isnan(values)]


#: The deviations from the median a search can run over (``left``/``right``: of the values at or
#: below / at or above it; ``nonmode``: of the values that differ from it).
DEVIATIONS = ("deviation", "left", "right", "nonmode")


def _transformed(x: np.ndarray, median: float | None, transform: str) -> np.ndarray:
    if transform == "value":
        return x
    deviation = np.abs(x - median)
    if transform == "deviation":
        return deviation
    if transform == "left":
        return deviation[x <= median]
    if transform == "right":
        return deviation[x >= median]
    return deviation[x != median]


def compute_pass(table: pa.Table, spec: dict[str, Any]) -> dict[str, Any]:
    """What one part contributes to a pass (see :func:`summarize_metrics` for ``spec``)."""
    out: dict[str, Any] = {"n": {}, "sums": {}, "buckets": {}}
    targets_of: dict[str, list[tuple[str, str, int, int]]] = {}
    for target, (t_key, transform, prefix, level) in spec["targets"].items():
        targets_of.setdefault(t_key, []).append((target, transform, prefix, level))
    for scope, mask in _scopes(table, spec["per_class"]).items():
        for metric in spec["metrics"]:
            key = f"{scope}\x00{metric}"
            x = _values(table, metric, mask, metric in spec.get("log", ()))
            median = spec["medians"].get(key)
            keys: dict[str, np.ndarray] = {}

            def keys_of(transform: str) -> np.ndarray:
                if transform not in keys:
                    keys[transform] = float_keys(_transformed(x, median, transform))
                return keys[transform]

            if spec["stage"] == "moments":
                out["n"][key] = int(x.size)
                out["sums"][key] = ExactSum().add(x).to_state()
                out["buckets"][key] = bucket_counts(keys_of("value"), 0, 0)
            elif spec["stage"] == "squares" and key in spec["means"]:
                with np.errstate(over="ignore"):  # squares beyond float64 sum to inf, as in NumPy
                    out["sums"][key] = ExactSum().add((x - spec["means"][key]) ** 2).to_state()
            elif spec["stage"] == "deviations" and median is not None:
                out["sums"][key] = ExactSum().add(np.abs(x - median)).to_state()
                for transform in spec["deviations"]:
                    out["n"][f"{key}\x00{transform}"] = int(keys_of(transform).size)
                    out["buckets"][f"{key}\x00{transform}"] = bucket_counts(keys_of(transform), 0, 0)
            for target, transform, prefix, level in targets_of.get(key, ()):
                out["buckets"][target] = bucket_counts(keys_of(transform), prefix, level)
    return out


def _columns(spec: dict[str, Any]) -> list[str]:
    columns = ["image_id", "status", "label"]
    for metric in spec.get("metrics") or spec.get("bounds", {}):
        columns += list(DERIVED_METRICS[metric][0]) if metric in DERIVED_METRICS else [metric]
    return columns


def run_pass(parts: Parts, spec: dict[str, Any]) -> dict[str, Any]:
    """One pass over every part (``spec`` as :func:`compute_pass` reads it), merged."""
    return parts.merge(compute_pass, spec, _columns(spec), merge_summaries, empty_summaries)


def flag_rows(table: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """The ``lint`` rows of one part: every (image, metric) outside its scope's bounds on a flagged
    side (``side``: ``both``, or only ``lower``/``upper``), with its
    ``severity = |value - centre| / half-width`` of the bounds (1 at a bound, 2 twice as far out;
    for ``zscore`` and ``modzscore`` that is the score over the threshold), both on the metric's
    threshold scale; ``value``, ``lower`` and ``upper`` are written on the statistic's own scale."""
    rows: dict[str, list] = {f.name: [] for f in LINT_SCHEMA}
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
    for scope, mask in _scopes(table, spec["per_class"]).items():
        for metric, bounds in spec["bounds"].items():
            if scope not in bounds:
                continue
            lower, upper, method, threshold, side = bounds[scope]
            log = metric in spec.get("log", ())
            raw = table.column(metric).cast(pa.float64()).to_numpy(zero_copy_only=False)
            values = to_scale(raw, log)
            flagging = LINT_SIDE_BOUNDS[side]
            low = values < lower if "lower" in flagging else False
            high = values > upper if "upper" in flagging else False
            hit = mask & ~np.isnan(values) & (low | high)
            centre, half_width = (lower + upper) / 2, (upper - lower) / 2
            for i in np.flatnonzero(hit):
                rows["severity"].append(float(abs(values[i] - centre) / half_width) if half_width > 0 else float("inf"))
                rows["image_id"].append(ids[i])
                rows["metric"].append(metric)
                rows["value"].append(float(raw[i]))
                rows["lower"].append(from_scale(lower, log))
                rows["upper"].append(from_scale(upper, log))
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


def _rank_searches(counts: dict[str, int], wanted: dict[str, list[tuple[str, str, float | None]]]
                   ) -> tuple[dict[str, tuple[str, str]], dict[str, OrderStatistic], dict[str, tuple[str, str, float | None]]]:
    """Searches for quantiles: ``wanted[key]`` lists ``(name, transform, q)`` (``q=None``: the median,
    ``q=0``: the smallest); ``counts[key\\x00transform]`` how many values the transform has. Returns
    ``(targets, searches, plan)`` with ``plan[name] = (lower search, upper search, weight)``."""
    targets: dict[str, tuple[str, str]] = {}
    searches: dict[str, OrderStatistic] = {}
    plan: dict[str, tuple[str, str, float | None]] = {}
    for key, items in wanted.items():
        for name, transform, q in items:
            n = counts.get(f"{key}\x00{transform}", 0)
            if n == 0:
                continue
            low, high, weight = (*median_ranks(n), None) if q is None else quantile_ranks(n, q)
            names = (f"{key}\x00{name}\x00lo", f"{key}\x00{name}\x00hi")
            for search, rank in zip(names, (low, high)):
                targets[search], searches[search] = (key, transform), OrderStatistic(rank)
            plan[f"{key}\x00{name}"] = (*names, weight)
    return targets, searches, plan


def _resolved(searches: dict[str, OrderStatistic], plan: dict[str, tuple[str, str, float | None]], name: str,
              default: float = 0.0) -> float:
    if name not in plan:
        return default
    lo, hi, weight = plan[name]
    low, high = searches[lo].value, searches[hi].value
    return middle(low, high) if weight is None else interpolate(low, high, weight)


def summarize_metrics(parts: Parts, metrics: list[str], per_class: bool, adaptive: bool = False,
                      dispersion: bool = True, log: list[str] = ()) -> dict[tuple[str, str], MetricSummary]:
    """``{(scope, metric): MetricSummary}`` over the ``ok`` rows (see module docstring).

    ``adaptive``: also the half-MADs and non-median deviations of the adaptive rule (the same four
    refinement passes search them beside the MAD); ``dispersion=False``: only counts, moments and
    quartiles (passes 1-4; MAD fields 0); ``log``: metrics summarised on the log scale (:func:`to_scale`)."""
    base = {"metrics": metrics, "per_class": per_class, "means": {}, "medians": {}, "log": list(log)}
    # 1. counts, exact sums, top 16 bits of every value
    first = run_pass(parts, {**base, "stage": "moments", "targets": {}})
    keys = sorted(k for k, n in first["n"].items() if n > 0)
    counts = {k: first["n"][k] for k in keys}
    means = {k: first["sums"][k].divided(counts[k]) for k in keys}
    targets, searches, plan = _rank_searches({f"{k}\x00value": counts[k] for k in keys},
                                             {k: [("q1", "value", 0.25), ("median", "value", None), ("q3", "value", 0.75)]
                                              for k in keys})
    for name, search in searches.items():
        search.refine(first["buckets"].get(targets[name][0], NO_BUCKETS))
    # 2.-4. the next bits of the quartiles and the median; the squared deviations from the mean
    squares = _order_statistics(parts, base, searches, targets, {"stage": "squares", "means": means})
    medians = {k: _resolved(searches, plan, f"{k}\x00median") for k in keys}
    quartiles = {k: (_resolved(searches, plan, f"{k}\x00q1"), _resolved(searches, plan, f"{k}\x00q3")) for k in keys}
    # 5.-8. the MAD (and the adaptive rule's deviations) and the mean absolute deviation from the median
    deviations = DEVIATIONS if adaptive else ("deviation",)
    level0: dict[str, Any] = {"n": {}, "sums": {}}
    dev_searches: dict[str, OrderStatistic] = {}
    dev_plan: dict[str, tuple[str, str, float | None]] = {}
    if dispersion:
        base["medians"] = medians
        level0 = run_pass(parts, {**base, "stage": "deviations", "deviations": deviations, "targets": {}})
        wanted = [("mad", "deviation", None)]
        if adaptive:
            wanted += [("mad_left", "left", None), ("p90_left", "left", 0.9), ("mad_right", "right", None),
                       ("p90_right", "right", 0.9), ("nonmode_min", "nonmode", 0.0), ("nonmode_mad", "nonmode", None),
                       ("nonmode_p90", "nonmode", 0.9)]
        dev_targets, dev_searches, dev_plan = _rank_searches(level0["n"], {k: wanted for k in keys})
        for name, search in dev_searches.items():
            key, transform = dev_targets[name]
            search.refine(level0["buckets"].get(f"{key}\x00{transform}", NO_BUCKETS))
        _order_statistics(parts, base, dev_searches, dev_targets, {"stage": "refine"})
    summaries = {}
    for k in keys:
        scope, metric = k.split("\x00")
        n = counts[k]
        variance = squares["sums"][k].divided(n) if k in squares.get("sums", {}) else 0.0
        side = level0["n"]
        extra = {}
        if adaptive and dispersion:
            extra = {"mad_left": _resolved(dev_searches, dev_plan, f"{k}\x00mad_left"),
                     "mad_right": _resolved(dev_searches, dev_plan, f"{k}\x00mad_right"),
                     "p90_left": _resolved(dev_searches, dev_plan, f"{k}\x00p90_left") if side.get(f"{k}\x00left", 0) > 1 else 0.0,
                     "p90_right": _resolved(dev_searches, dev_plan, f"{k}\x00p90_right") if side.get(f"{k}\x00right", 0) > 1 else 0.0,
                     "n_nonmode": int(side.get(f"{k}\x00nonmode", 0)),
                     "nonmode_min": _resolved(dev_searches, dev_plan, f"{k}\x00nonmode_min"),
                     "nonmode_mad": _resolved(dev_searches, dev_plan, f"{k}\x00nonmode_mad"),
                     "nonmode_p90": _resolved(dev_searches, dev_plan, f"{k}\x00nonmode_p90")}
        summaries[(scope, metric)] = MetricSummary(
            n=n, mean=means[k], std=float(np.sqrt(variance)), median=medians[k],
            mad=_resolved(dev_searches, dev_plan, f"{k}\x00mad"),
            mean_abs_dev=level0["sums"][k].divided(n) if k in level0["sums"] else 0.0,
            q1=quartiles[k][0], q3=quartiles[k][1], **extra)
    return summaries


def run_lint(parts: Parts, config: LintConfig) -> tuple[Any, dict[str, Any]]:
    """Flags of every metric (``lint`` parts written by the tasks, or a table for in-memory parts) and the
    thresholds used: ``{metric: {scope: {method, threshold, scale, side, n, lower, upper | skipped}}}``
    (bounds on the statistic's own scale)."""
    metrics = list(config.metrics or DEFAULT_LINT_METRICS)
    log = sorted(set(config.log_metrics) & set(metrics))
    adaptive = any(config.rule_for(metric)[0] == "adaptive" for metric in metrics)
    summaries = summarize_metrics(parts, metrics, config.per_class, adaptive=adaptive, log=log)
    used: dict[str, Any] = {}
    bounds: dict[str, dict[str, tuple]] = {}
    for (scope, metric), summary in sorted(summaries.items()):
        method, multiplier = config.rule_for(metric)
        side = config.side_for(metric)
        entry: dict[str, Any] = {"method": method, "threshold": multiplier, "scale": "log" if metric in log else "linear",
                                 "side": side, "n": summary.n}
        found = compute_bounds(summary, method, multiplier)
        if found is None:
            entry["skipped"] = "zero spread"
        else:
            entry["lower"], entry["upper"] = (from_scale(b, metric in log) for b in found)
            bounds.setdefault(metric, {})[scope] = (*found, method, multiplier, side)
        used.setdefault(metric, {})[scope] = entry
    spec = {"per_class": config.per_class, "bounds": bounds, "log": log}
    flags = parts.write(flag_table, spec, _columns(spec), "lint")
    return flags, used


def flag_table(tables: list[pa.Table], spec: dict[str, Any]) -> pa.Table:
    """The flags of some parts, ordered by metric and image."""
    flags = [flag_rows(table, spec) for table in tables]
    table = pa.concat_tables(flags) if flags else LINT_SCHEMA.empty_table()
    return table.sort_by([("metric", "ascending"), ("image_id", "ascending")])
