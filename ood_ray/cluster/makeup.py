"""Table ``clusters``: one row per cluster with its make-up, merged from per-part summaries.

Over every image assigned to a cluster (the final ``images`` parts, read by Ray tasks; nothing per
image reaches the driver): ``size``; ``mean_distance`` and ``std_distance`` (population) of
``cluster_distance``, from exact sums (:class:`ood_ray.lint.summaries.ExactSum`: the mean is the
exact sum rounded once, the variance a second pass of exact sums of squared deviations from it),
so the numbers are the same to the bit however the images were split into parts; ``outliers``
(``is_cluster_outlier``); ``labels`` and ``splits`` as ``{value: count}`` maps; ``n_labels``;
``majority_label`` (ties: the smallest label) and ``purity`` = majority count / labelled members.
Clusters no image landed in keep their row with ``size`` 0. The driver holds one entry per
cluster, label and split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.lint.summaries import ExactSum
from ood_ray.parts import Parts

COLUMNS = ["image_id", "cluster", "cluster_distance", "is_cluster_outlier", "label", "split"]
MAP = pa.map_(pa.string(), pa.uint64())
SCHEMA = pa.schema([
    ("cluster", pa.int32()), ("size", pa.int64()), ("centroid_norm", pa.float64()), ("mean_distance", pa.float64()),
    ("std_distance", pa.float64()), ("fit_mean_distance", pa.float64()), ("fit_std_distance", pa.float64()),
    ("outliers", pa.int64()), ("n_labels", pa.int64()), ("majority_label", pa.string()), ("purity", pa.float64()),
    ("labels", MAP), ("splits", MAP),
])


def _assigned(table: pa.Table) -> pa.Table:
    for name in COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table.filter(pc.is_valid(table.column("cluster")))


def _by_cluster(table: pa.Table, column: str) -> dict[tuple[int, str], int]:
    """``{(cluster, value): members}`` of one part (null values left out)."""
    counts = table.select(["cluster", column]).filter(pc.is_valid(table.column(column))) \
        .group_by(["cluster", column]).aggregate([([], "count_all")])
    return {(int(c), str(v)): int(n) for c, v, n in zip(*(counts.column(x).to_pylist() for x in ("cluster", column, "count_all")))}


def summarize_part(table: pa.Table, spec: dict[str, Any]) -> dict[str, Any]:
    """One part's counts and exact sums per cluster (``spec["means"]``: the squared-deviation pass)."""
    table = _assigned(table)
    out = empty_summary()
    cluster = table.column("cluster").to_numpy(zero_copy_only=False).astype(np.int64)
    distance = table.column("cluster_distance").cast(pa.float64()).to_numpy(zero_copy_only=False)
    order = np.argsort(cluster, kind="stable")
    ids, starts = np.unique(cluster[order], return_index=True)
    for c, members in zip(ids.tolist(), np.split(order, starts[1:])):
        d = distance[members]
        d = d[~np.isnan(d)]
        if spec.get("means") is not None:
            if c in spec["means"]:
                out["sums"][c] = ExactSum().add((d - spec["means"][c]) ** 2)
            continue
        out["size"][c] = int(members.size)
        out["n_distance"][c] = int(d.size)
        out["sums"][c] = ExactSum().add(d)
    if spec.get("means") is None:
        outlier = np.asarray(pc.fill_null(table.column("is_cluster_outlier").cast(pa.bool_()), False))
        out["outliers"] = {int(c): int(n) for c, n in zip(*np.unique(cluster[outlier], return_counts=True))}
        out["labels"] = _by_cluster(table, "label")
        table = table.set_column(table.column_names.index("split"), "split",
                                 pc.fill_null(table.column("split").cast(pa.string()), ""))
        out["splits"] = _by_cluster(table, "split")
    return out


def empty_summary() -> dict[str, Any]:
    return {"size": {}, "sums": {}, "n_distance": {}, "outliers": {}, "labels": {}, "splits": {}}


def merge_summary(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    for key in ("size", "n_distance", "outliers", "labels", "splits"):
        for name, count in part[key].items():
            total[key][name] = total[key].get(name, 0) + count
    for cluster, exact in part["sums"].items():
        total["sums"][cluster] = total["sums"].get(cluster, ExactSum()).merge(exact)
    return total


def _counts(pairs: dict[tuple[int, str], int], cluster: int) -> list[tuple[str, int]]:
    return sorted((value, n) for (c, value), n in pairs.items() if c == cluster)


def clusters_table(parts: Parts, centroid_norm: np.ndarray, fit_mean_distance: np.ndarray,
                   fit_std_distance: np.ndarray) -> pa.Table:
    """The ``clusters`` table (see module docstring); the ``fit_*`` columns and ``centroid_norm``
    come from the fitted model, one entry per cluster."""
    first = parts.merge(summarize_part, {}, COLUMNS, merge_summary, empty_summary)
    means = {c: first["sums"][c].divided(n) for c, n in first["n_distance"].items() if n}
    squares = parts.merge(summarize_part, {"means": means}, COLUMNS, merge_summary, empty_summary) if means else empty_summary()
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for cluster in range(len(centroid_norm)):
        size = first["size"].get(cluster, 0)
        labels, splits = _counts(first["labels"], cluster), _counts(first["splits"], cluster)
        labelled = sum(n for _, n in labels)
        majority = min(labels, key=lambda item: (-item[1], item[0])) if labels else None
        rows["cluster"].append(cluster)
        rows["size"].append(size)
        rows["centroid_norm"].append(float(centroid_norm[cluster]))
        rows["mean_distance"].append(means.get(cluster))
        rows["std_distance"].append(float(np.sqrt(squares["sums"][cluster].divided(first["n_distance"][cluster])))
                                    if cluster in means and cluster in squares["sums"] else None)
        rows["fit_mean_distance"].append(float(fit_mean_distance[cluster]))
        rows["fit_std_distance"].append(float(fit_std_distance[cluster]))
        rows["outliers"].append(first["outliers"].get(cluster, 0))
        rows["n_labels"].append(len(labels))
        rows["majority_label"].append(majority[0] if majority else None)
        rows["purity"].append(majority[1] / labelled if majority else None)
        rows["labels"].append(labels if size else None)
        rows["splits"].append(splits if size else None)
    return pa.Table.from_pydict(rows, schema=SCHEMA)
