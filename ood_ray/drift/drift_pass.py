"""The drift pass: table ``drift``, one row per test, for each new split against the reference.

*Reference*: the reference split of this run (``ood.reference_split``), or with ``--reference``
the reference rows of that run (its tables are read, nothing is recomputed). *New data*: every
other ``ok`` row of this run, one group per ``split`` (with ``--reference``: every ``ok`` row).

Per group (see :mod:`ood_ray.drift.tests` for the tests):

- ``ks`` and ``cvm`` for every image statistic on seeded samples of ``drift.sample_size`` rows per
  side; one family, thresholds corrected (``drift.correction``).
- ``mmd`` on each model's L2-normalised embeddings (``drift.mmd_sample`` per side) and ``knn_shift`` (Mann-Whitney
  U of ``score_knn_<model>``, new > reference); a second family, corrected the same way.
- ``label_shift``: chi-squared test of the label counts (class balance; every row, no sample).
- ``new_classes`` (cluster model): ``statistic = k_combined - k_reference`` (silhouette-best k),
  drifted when positive or when a joint cluster is new; one ``new_cluster`` row per new cluster
  (``statistic`` = share of its new members with no reference image nearby, threshold 0.5).

Columns: ``split``, ``test``, ``feature``, ``model``, ``statistic``, ``p_value``, ``threshold`` (the
corrected p-value threshold, or the rule's), ``drifted``, ``n_reference``, ``n_new``, ``detail``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ood_ray.columns import embedding_matrix
from ood_ray.config import DriftConfig
from ood_ray.detectors.knn import l2_normalize
from ood_ray.drift.new_classes import detect_new_classes
from ood_ray.drift.tests import (
    corrected_threshold,
    cvm_test,
    ks_test,
    mann_whitney_greater,
    mmd_test,
)
from ood_ray.sampling import Sampler, hash_order
from ood_ray.stats.image import IMAGE_STAT_NAMES
from ood_ray.tables import DRIFT_SCHEMA

log = logging.getLogger(__name__)



class Side:
    """One side of a comparison: a DuckDB connection with ``images``/``embeddings`` and a row filter."""

    def __init__(self, con: duckdb.DuckDBPyConnection, where: str, seed: int, sampler: Sampler | None = None) -> None:
        self.con, self.where, self.seed, self.sampler = con, where, seed, sampler

    def _order(self) -> str:
        return hash_order(f"drift{int(self.seed)}")

    def columns(self) -> set[str]:
        return {row[0] for row in self.con.execute("DESCRIBE images").fetchall()}

    def values(self, names: list[str], limit: int) -> dict[str, np.ndarray]:
        """A seeded sample of scalar columns (nulls dropped per column)."""
        if not names:
            return {}
        if self.sampler is not None:  # drawn part by part in Ray tasks
            table = self.sampler.select(names, self.where, self._order(), limit)
        else:
            select = ", ".join(f'"{n}"' for n in names)
            table = self.con.sql(f"SELECT {select} FROM images WHERE {self.where} ORDER BY {self._order()}, image_id "
                                 f"LIMIT {int(limit)}").to_arrow_table()
        out = {}
        for name in names:
            column = table.column(name).drop_null().cast(pa.float64()) if table.num_rows else pa.array([], pa.float64())
            out[name] = np.asarray(column.to_numpy(), dtype=np.float64)
        return out

    def label_counts(self) -> dict[str, int]:
        """Images per label (every matching row, not a sample)."""
        rows = self.con.execute(f"SELECT label, count(*) FROM images WHERE {self.where} AND label IS NOT NULL GROUP BY label").fetchall()
        return {str(label): int(n) for label, n in rows}

    def embeddings(self, model: str, limit: int) -> np.ndarray:
        """A seeded sample of one model's embeddings, ``float32[n, D]``."""
        table = self.con.sql(
            f"""SELECT e.embedding FROM embeddings e JOIN (SELECT image_id FROM images WHERE {self.where}) USING (image_id)
                WHERE e.model = '{model.replace("'", "''")}' ORDER BY {hash_order(f"drift{int(self.seed)}", "e.image_id")} LIMIT {int(limit)}"""
        ).to_arrow_table()
        return embedding_matrix(table.column("embedding"))[1]


def _row(split: str, test: str, feature: str, model: str | None, statistic: float, p_value: float | None,
         n_ref: int, n_new: int, detail: dict | None = None) -> dict[str, Any]:
    return {"split": split, "test": test, "feature": feature, "model": model, "statistic": float(statistic),
            "p_value": None if p_value is None else float(p_value), "threshold": None, "drifted": None,
            "n_reference": int(n_ref), "n_new": int(n_new), "detail": json.dumps(detail) if detail else None}


def _apply_correction(rows: list[dict[str, Any]], config: DriftConfig) -> None:
    threshold = corrected_threshold([r["p_value"] for r in rows], config.alpha, config.correction)
    for r in rows:
        r["threshold"] = threshold
        r["drifted"] = bool(r["p_value"] <= threshold)


def statistic_tests(reference: Side, new: Side, split: str, config: DriftConfig) -> list[dict[str, Any]]:
    """KS and CvM for every statistic (one corrected family)."""
    names = [n for n in (config.statistics or IMAGE_STAT_NAMES) if n in reference.columns()]
    ref, cur = reference.values(names, config.sample_size), new.values(names, config.sample_size)
    rows = []
    for name in names:
        a, b = ref[name], cur[name]
        if len(a) < 2 or len(b) < 2:
            continue
        if np.ptp(np.concatenate([a, b])) == 0:
            rows += [_row(split, t, name, None, 0.0, 1.0, len(a), len(b)) for t in ("ks", "cvm")]
            continue
        for test, fn in (("ks", ks_test), ("cvm", cvm_test)):
            result = fn(a, b)
            rows.append(_row(split, test, name, None, result.statistic, result.p_value, len(a), len(b)))
    _apply_correction(rows, config)
    return rows


def embedding_tests(reference: Side, new: Side, split: str, models: list[str], config: DriftConfig) -> list[dict[str, Any]]:
    """MMD per model and the kNN-distance shift (one corrected family)."""
    rows = []
    for model in models:
        a, b = reference.embeddings(model, config.mmd_sample), new.embeddings(model, config.mmd_sample)
        if len(a) >= 2 and len(b) >= 2:
            result = mmd_test(l2_normalize(a), l2_normalize(b), config.mmd_permutations, config.seed)
            rows.append(_row(split, "mmd", "embedding", model, result.statistic, result.p_value, len(a), len(b),
                             {"kernel": "rbf on unit vectors, median heuristic", "permutations": config.mmd_permutations}))
        column = f"score_knn_{model}"
        if column in reference.columns() and column in new.columns():
            a, b = reference.values([column], config.sample_size)[column], new.values([column], config.sample_size)[column]
            if len(a) and len(b):
                result = mann_whitney_greater(a, b)
                rows.append(_row(split, "knn_shift", column, model, result.statistic, result.p_value, len(a), len(b),
                                 {"statistic": "P(new > reference)", "median_reference": float(np.median(a)),
                                  "median_new": float(np.median(b))}))
    _apply_correction(rows, config)
    return rows


def label_shift_test(reference: Side, new: Side, split: str, config: DriftConfig) -> list[dict[str, Any]]:
    """Class balance: chi-squared test of the 2 x L contingency table of label counts (prior shift;
    labels present on one side only count as their own column). One test, level ``alpha``."""
    from ood_ray.drift.tests import label_shift

    a, b = reference.label_counts(), new.label_counts()
    if not a or not b:
        return []
    result, labels = label_shift(a, b)
    n_ref, n_new = sum(a.values()), sum(b.values())
    shares = {label: [round(a.get(label, 0) / n_ref, 4), round(b.get(label, 0) / n_new, 4)] for label in labels}
    row = _row(split, "label_shift", "label", None, result.statistic, result.p_value, n_ref, n_new,
               {"share_reference_new": shares})
    row["threshold"], row["drifted"] = config.alpha, bool(result.p_value <= config.alpha)
    return [row]


def new_class_tests(reference: Side, new: Side, split: str, model: str, config: DriftConfig, cluster: Any) -> list[dict[str, Any]]:
    """The silhouette comparison and the new clusters (see :mod:`ood_ray.drift.new_classes`)."""
    a, b = reference.embeddings(model, config.new_class_sample), new.embeddings(model, config.new_class_sample)
    if len(a) < 3 or len(b) < 1:
        return []
    report = detect_new_classes(a, b, cluster.k_min, cluster.k_max, cluster.niter, config.seed, cluster.silhouette_sample)
    row = _row(split, "new_classes", "silhouette_k", model, report.k_combined - report.k_reference, None, len(a), len(b), {
        "k_reference": report.k_reference, "k_combined": report.k_combined, "new_clusters": report.new_clusters,
        "reference_radius": round(report.reference_radius, 5),
        "silhouette_reference": {str(k): round(v, 4) for k, v in report.silhouette_reference.items()},
        "silhouette_combined": {str(k): round(v, 4) for k, v in report.silhouette_combined.items()}})
    row["threshold"], row["drifted"] = 0.0, bool(report.k_combined > report.k_reference or report.new_clusters)
    rows = [row]
    for c, n_ref, n_new, far_share in report.clusters:
        if c in report.new_clusters:
            r = _row(split, "new_cluster", f"cluster {c}", model, far_share, None, n_ref, n_new,
                     {"reference_members": n_ref, "new_members": n_new})
            r["threshold"], r["drifted"] = 0.5, True
            rows.append(r)
    return rows


def run_drift(con: duckdb.DuckDBPyConnection, reference_where: str, new_where: str, config: Any, models: list[str],
              cluster_model: str | None, reference_con: duckdb.DuckDBPyConnection | None = None,
              sampler: Sampler | None = None, reference_sampler: Sampler | None = None) -> pa.Table:
    """Every drift test for every new split (see module docstring); ``config`` is the audit config.
    The statistics' samples are drawn by ``sampler``/``reference_sampler`` (Ray tasks) when given."""
    drift = config.drift
    reference = Side(reference_con or con, reference_where, drift.seed,
                     reference_sampler if reference_con is not None else sampler)
    splits = [row[0] for row in con.execute(f"SELECT DISTINCT split FROM images WHERE {new_where} ORDER BY 1").fetchall()]
    rows: list[dict[str, Any]] = []
    for split in splits:
        condition = "split IS NULL" if split is None else f"split = '{split.replace(chr(39), chr(39) * 2)}'"
        new = Side(con, f"({new_where}) AND {condition}", drift.seed, sampler)
        name = split if split is not None else "(none)"
        rows += statistic_tests(reference, new, name, drift)
        rows += label_shift_test(reference, new, name, drift)
        rows += embedding_tests(reference, new, name, models, drift)
        if cluster_model:
            rows += new_class_tests(reference, new, name, cluster_model, drift, config.cluster)
        log.info("drift of split %r: %d of %d tests drifted", name, sum(bool(r["drifted"]) for r in rows if r["split"] == name),
                 sum(r["split"] == name for r in rows))
    return pa.Table.from_pylist(rows, schema=DRIFT_SCHEMA)
