"""Exact quantiles of score columns over the rows a SQL condition selects, computed part by part.

The OOD thresholds are the ``q``-quantile of each score over the reference rows (NumPy's default
linear quantile, DuckDB's ``quantile_cont``: ``x[lo] + (x[hi] - x[lo]) t`` with ``lo = floor(q (n -
1))``, ``hi = lo + 1``, ``t = q (n - 1) - lo``). DuckDB computes them by holding every value of the
column in the driver's memory; past ``ood.driver_quantile_max_rows`` reference rows they are
computed instead from the mergeable summaries the lint uses (:mod:`ood_ray.lint.summaries`): a pass
over the parts counts each column's values and the top 16 bits of their sort keys, and three more
passes refine the two order statistics around ``q (n - 1)`` 16 bits at a time. Each part is
filtered by the same SQL condition (DuckDB inside the task). The result is the same number to the
bit as NumPy on the whole column (tested); ``NaN`` scores are left out (``NULL`` always is).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ood_ray.lint.summaries import (
    NO_BUCKETS,
    OrderStatistic,
    bucket_counts,
    empty_summaries,
    float_keys,
    interpolate,
    merge_summaries,
    quantile_ranks,
    refine_searches,
)
from ood_ray.parts import Parts
from ood_ray.sampling import FILTER_COLUMNS, query_part


def _selected(table: pa.Table, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{column: sort keys}`` of one part's selected, non-null, non-NaN values."""
    names = ", ".join(f'"{c}"' for c in spec["columns"] if c in table.column_names)
    rows = query_part(table, f"SELECT {names} FROM images WHERE {spec['where']}", FILTER_COLUMNS) if names else pa.table({})
    out = {}
    for column in spec["columns"]:
        if column not in rows.column_names:
            continue
        values = rows.column(column).drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False)
        out[column] = float_keys(values[~np.isnan(values)])
    return out


def histogram_pass(table: pa.Table, spec: dict[str, Any]) -> dict[str, Any]:
    """One part's counts and top-16-bit buckets per column (``spec["targets"]`` empty), or the next
    16 bits under each open search's prefix."""
    out = empty_summaries()
    keys = _selected(table, spec)
    if not spec["targets"]:
        for column, k in keys.items():
            out["n"][column] = int(k.size)
            out["buckets"][column] = bucket_counts(k, 0, 0)
    for name, (column, prefix, level) in spec["targets"].items():
        if column in keys:
            out["buckets"][name] = bucket_counts(keys[column], prefix, level)
    return out


def exact_quantiles(parts: Parts, columns: list[str], where: str, q: float) -> dict[str, tuple[float, int]]:
    """``{column: (q-quantile, n)}`` over the rows matching ``where`` (columns without a value left out)."""
    reads = list(dict.fromkeys([*FILTER_COLUMNS, *columns]))
    base = {"columns": list(columns), "where": where}

    def one_pass(targets: dict[str, tuple], round_: int) -> dict[str, Any]:
        return parts.merge(histogram_pass, {**base, "targets": targets}, reads, merge_summaries, empty_summaries)

    first = one_pass({}, -1)
    counts = {c: first["n"][c] for c in columns if first["n"].get(c)}
    searches, targets, plan = {}, {}, {}
    for column, n in counts.items():
        low, high, weight = quantile_ranks(n, q)
        plan[column] = (f"{column}\x00lo", f"{column}\x00hi", weight)
        for name, rank in zip(plan[column][:2], (low, high)):
            searches[name], targets[name] = OrderStatistic(rank), (column,)
            searches[name].refine(first["buckets"].get(column, NO_BUCKETS))
    refine_searches(searches, targets, one_pass)
    return {column: (interpolate(searches[lo].value, searches[hi].value, weight), counts[column])
            for column, (lo, hi, weight) in plan.items()}
