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


def summarize_metrics(con: duckdb.DuckDBPyConnection, metrics: list[str], per_class: bool) -> dict[tuple[str, str], MetricSummary]:
    """``{(group, metric): MetricSummary}`` over the ``ok`` rows of ``images``."""
    group = _group_expression(per_class)
    values = ", ".join(f'CAST("{m}" AS DOUBLE) AS "{m}"' for m in metrics)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _lint_values AS SELECT {group} AS grp, {values} FROM images WHERE status = 'ok'")
    first = ", ".join(
        f'count("{m}"), avg("{m}"), stddev_pop("{m}"), median("{m}"), quantile_cont("{m}", 0.25), quantile_cont("{m}", 0.75)'
        for m in metrics
    )
    base = con.execute(f"SELECT grp, {first} FROM _lint_values GROUP BY grp").fetchall()
    medians = {(row[0], m): row[1 + 6 * i + 3] for row in base for i, m in enumerate(metrics)}
    con.register("_lint_medians", pa.table({
        "grp": [g for g, _ in medians], "metric": [m for _, m in medians], "med": [medians[k] for k in medians],
    }))
    unpivot = " UNION ALL ".join(
        f"""SELECT grp, '{m}' AS metric, "{m}" AS value FROM _lint_values""" for m in metrics
    )
    spread = con.sql(
        f"""SELECT v.grp, v.metric, median(abs(v.value - d.med)), avg(abs(v.value - d.med))
            FROM ({unpivot}) v JOIN _lint_medians d ON v.grp = d.grp AND v.metric = d.metric
            GROUP BY v.grp, v.metric"""
    ).fetchall()
    deviations = {(g, m): (mad, meanad) for g, m, mad, meanad in spread}
    summaries = {}
    for row in base:
        for i, metric in enumerate(metrics):
            n, mean, std, median, q1, q3 = row[1 + 6 * i : 7 + 6 * i]
            if not n:
                continue
            mad, meanad = deviations.get((row[0], metric), (0.0, 0.0))
            summaries[(row[0], metric)] = MetricSummary(
                n=int(n), mean=mean, std=std or 0.0, median=median, mad=mad or 0.0,
                mean_abs_dev=meanad or 0.0, q1=q1, q3=q3,
            )
    con.unregister("_lint_medians")
    return summaries


def run_lint(con: duckdb.DuckDBPyConnection, config: LintConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Flags of every metric as a ``lint`` table, and the thresholds used (for ``run.json``).

    The thresholds are ``{metric: {scope: {method, threshold, n, lower, upper | skipped}}}`` where
    ``scope`` is ``"all"``, or each label when ``per_class``.
    """
    metrics = list(config.metrics or IMAGE_STAT_NAMES)
    summaries = summarize_metrics(con, metrics, config.per_class)
    rows: dict[str, list] = {k: [] for k in ("grp", "metric", "lower", "upper", "method", "threshold")}
    used: dict[str, Any] = {}
    for (group, metric), summary in sorted(summaries.items()):
        method, multiplier = config.rule_for(metric)
        bounds = compute_bounds(summary, method, multiplier)
        entry: dict[str, Any] = {"method": method, "threshold": multiplier, "n": summary.n}
        if bounds is None:
            entry["skipped"] = "zero spread"
        else:
            entry["lower"], entry["upper"] = bounds
            for key, value in zip(rows, (group, metric, bounds[0], bounds[1], method, multiplier)):
                rows[key].append(value)
        used.setdefault(metric, {})[group] = entry

    if not rows["metric"]:
        return LINT_SCHEMA.empty_table(), used
    con.register("_lint_bounds", pa.table(rows))
    unpivot = " UNION ALL ".join(
        f"""SELECT image_id, {_group_expression(config.per_class)} AS grp, '{m}' AS metric,
                   CAST("{m}" AS DOUBLE) AS value FROM images WHERE status = 'ok' AND "{m}" IS NOT NULL"""
        for m in sorted(set(rows["metric"]))
    )
    flags = con.sql(
        f"""SELECT v.image_id, v.metric, v.value, b.lower, b.upper, b.method, b.threshold, v.grp AS scope
            FROM ({unpivot}) v JOIN _lint_bounds b ON v.grp = b.grp AND v.metric = b.metric
            WHERE v.value < b.lower OR v.value > b.upper
            ORDER BY v.metric, v.image_id""").to_arrow_table()
    con.unregister("_lint_bounds")
    log.info("lint: %d flags on %d images", flags.num_rows, len(set(flags.column("image_id").to_pylist())))
    return flags.cast(LINT_SCHEMA), used
