"""The lint pass: thresholds per metric (optionally per class) and the ``lint`` table of flags.

Two DuckDB queries over ``images`` (``status = 'ok'`` rows only): one aggregation gives each
metric's mean, std, median, quartiles, MAD and mean absolute deviation (per label when
``lint.per_class``); :func:`ood_ray.lint.thresholds.compute_bounds` turns them into bounds; one
``UNPIVOT ... JOIN bounds`` emits a row per flag. Metrics whose spread is zero get no bounds and
are reported as skipped. Every threshold used is returned for ``run.json``.
"""

from __future__ import annotations

import logging
from typing import Any

import duckdb
import pyarrow as pa

from ood_ray.config import LintConfig
from ood_ray.lint.thresholds import MetricSummary, compute_bounds
from ood_ray.stats.image import IMAGE_STAT_NAMES
from ood_ray.tables import LINT_SCHEMA

log = logging.getLogger(__name__)

#: The ``scope`` of thresholds computed over the whole dataset (per-class scopes are labels).
ALL_SCOPE = "all"
UNLABELLED_SCOPE = "(none)"


def _group_expression(per_class: bool) -> str:
    return f"coalesce(label, '{UNLABELLED_SCOPE}')" if per_class else f"'{ALL_SCOPE}'"


def _create_values_view(con: duckdb.DuckDBPyConnection, metrics: list[str], per_class: bool) -> None:
    values = ", ".join(f'CAST("{m}" AS DOUBLE) AS "{m}"' for m in metrics)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _lint_values AS "
        f"SELECT image_id, {_group_expression(per_class)} AS grp, {values} FROM images WHERE status = 'ok' ORDER BY image_id"
    )


def summarize_metrics(con: duckdb.DuckDBPyConnection, metrics: list[str], per_class: bool) -> dict[tuple[str, str], MetricSummary]:
    """``{(group, metric): MetricSummary}`` over the ``ok`` rows of ``images``.

    Two scans whatever the number of metrics: the moments, medians and quartiles of every metric
    in one aggregation, then the absolute deviations from those medians in a second. The rows are
    aggregated in ``image_id`` order on one thread, so the floating-point sums -- and the bounds --
    are the same to the last bit however the rows were split into part files (a resumed run's
    thresholds equal an uninterrupted run's).
    """
    from ood_ray.query import single_threaded

    with single_threaded(con):
        return _summarize(con, metrics, per_class)


def _summarize(con: duckdb.DuckDBPyConnection, metrics: list[str], per_class: bool) -> dict[tuple[str, str], MetricSummary]:
    _create_values_view(con, metrics, per_class)
    first = ", ".join(
        f'count("{m}"), avg("{m}"), stddev_pop("{m}"), median("{m}"), quantile_cont("{m}", 0.25), quantile_cont("{m}", 0.75)'
        for m in metrics
    )
    base = con.execute(f"SELECT grp, {first} FROM _lint_values GROUP BY grp").fetchall()
    medians = {"grp": [row[0] for row in base]}
    for i in range(len(metrics)):
        medians[f"med_{i}"] = [row[1 + 6 * i + 3] for row in base]
    con.register("_lint_medians", pa.table(medians))
    deviations = ", ".join(
        f'median(abs(v."{m}" - d.med_{i})), avg(abs(v."{m}" - d.med_{i}))' for i, m in enumerate(metrics)
    )
    spread = {
        row[0]: row[1:]
        for row in con.execute(f"SELECT v.grp, {deviations} FROM _lint_values v JOIN _lint_medians d USING (grp) GROUP BY v.grp").fetchall()
    }
    con.unregister("_lint_medians")
    summaries = {}
    for row in base:
        for i, metric in enumerate(metrics):
            n, mean, std, median, q1, q3 = row[1 + 6 * i : 7 + 6 * i]
            if not n:
                continue
            mad, mean_abs_dev = spread[row[0]][2 * i : 2 * i + 2]
            summaries[(row[0], metric)] = MetricSummary(
                n=int(n), mean=mean, std=std or 0.0, median=median, mad=mad or 0.0,
                mean_abs_dev=mean_abs_dev or 0.0, q1=q1, q3=q3,
            )
    return summaries


def run_lint(con: duckdb.DuckDBPyConnection, config: LintConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Flags of every metric as a ``lint`` table, and the thresholds used (for ``run.json``).

    The thresholds are ``{metric: {scope: {method, threshold, n, lower, upper | skipped}}}`` where
    ``scope`` is ``"all"``, or each label when ``per_class``. The flags come from one more scan:
    each row is tested against every metric's bounds at once and only the flags are kept.
    """
    metrics = list(config.metrics or IMAGE_STAT_NAMES)
    summaries = summarize_metrics(con, metrics, config.per_class)
    groups = sorted({group for group, _ in summaries})
    bounds: dict[str, list] = {"grp": groups}
    used: dict[str, Any] = {}
    flagged_metrics = []
    for i, metric in enumerate(metrics):
        method, multiplier = config.rule_for(metric)
        lower, upper = [None] * len(groups), [None] * len(groups)
        for g, group in enumerate(groups):
            summary = summaries.get((group, metric))
            if summary is None:
                continue
            entry: dict[str, Any] = {"method": method, "threshold": multiplier, "n": summary.n}
            found = compute_bounds(summary, method, multiplier)
            if found is None:
                entry["skipped"] = "zero spread"
            else:
                entry["lower"], entry["upper"] = lower[g], upper[g] = found
            used.setdefault(metric, {})[group] = entry
        if any(value is not None for value in lower):
            bounds[f"lo_{i}"], bounds[f"hi_{i}"] = lower, upper
            flagged_metrics.append((i, metric, method, multiplier))

    if not flagged_metrics:
        return LINT_SCHEMA.empty_table(), used
    con.register("_lint_bounds", pa.table({k: pa.array(v, pa.float64() if k != "grp" else pa.string()) for k, v in bounds.items()}))
    tests = ", ".join(
        f"""{{'metric': '{m}', 'value': v."{m}", 'lower': b.lo_{i}, 'upper': b.hi_{i},
             'method': '{method}', 'threshold': {float(multiplier)!r}}}"""
        for i, m, method, multiplier in flagged_metrics
    )
    flags = con.sql(
        f"""SELECT image_id, f.metric, f.value, f.lower, f.upper, f.method, f.threshold, scope FROM (
                SELECT v.image_id, v.grp AS scope, unnest([{tests}]) AS f
                FROM _lint_values v JOIN _lint_bounds b USING (grp))
            WHERE f.value < f.lower OR f.value > f.upper
            ORDER BY f.metric, image_id"""
    ).to_arrow_table()
    con.unregister("_lint_bounds")
    log.info("lint: %d flags on %d images", flags.num_rows, len(set(flags.column("image_id").to_pylist())))
    return flags.cast(LINT_SCHEMA), used
