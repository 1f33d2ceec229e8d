"""Fitting the model-based OOD scores on the reference split (driver, DuckDB over staged rows).

- **Thresholds**: for every score column, ``quantile_cont(score, q)`` over the reference rows
  (split ``ood.reference_split``; all ``ok`` rows when no row has that split -- the selection the
  scan stage records), computed by DuckDB over all of them (NumPy's default linear quantile).
- **Fitted embedding detectors** (clf_entropy, Mahalanobis, RMD; when labels exist): a
  stratified sample of labelled reference embeddings -- at most ``ood.clf_max_per_class`` per
  label, at most ``ood.clf_max_samples`` in all, picked by a seeded hash of ``image_id`` so a run
  is reproducible -- fits each detector; its threshold is the quantile over up to
  ``ood.threshold_sample`` *other* reference rows (held out from the fit, so the fit does not
  lower it).

Without labels, label-dependent scores are skipped with a log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ood_ray.config import OODConfig
from ood_ray.sampling import Sampler, hash_order
from ood_ray.detectors import REGISTRY
from ood_ray.detectors.clf_entropy import ClassifierEntropy
from ood_ray.columns import EMBEDDING_PREFIX
from ood_ray.embed.models import ModelInfo

log = logging.getLogger(__name__)


@dataclass
class OODFit:
    """Thresholds ``{score column: value}``, fitted detectors and a report."""

    thresholds: dict[str, float] = field(default_factory=dict)
    #: ``{score column: {"detector": name, "model": alias, "state": state_dict}}``
    fitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def stratified_sample(sampler: Sampler, where: str, column: str, config: OODConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(image_ids, labels, embeddings)`` of a seeded, per-label-capped sample (drawn part by part)."""
    table = sampler.select(["label", column], f'{where} AND label IS NOT NULL AND "{column}" IS NOT NULL',
                           hash_order(int(config.seed)), config.clf_max_samples, "label", config.clf_max_per_class)
    return _unpack(table.rename_columns(["image_id", "label", "v"]))


def _unpack(table: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = table.column("image_id").to_pylist()
    labels = np.asarray(table.column("label").to_pylist(), dtype=object) if "label" in table.column_names else np.array([])
    vectors = table.column("v").combine_chunks()
    dim = len(vectors[0]) if len(vectors) else 0
    values = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), dim) if dim else np.zeros((0, 0))
    return ids, labels, values


def fitted_detectors(info: ModelInfo, config: OODConfig) -> list[str]:
    """Which fitted embedding detectors apply to a model (see :class:`OODConfig`)."""
    names = []
    if config.clf_entropy == "all" or (config.clf_entropy == "headless" and info.num_classes == 0):
        names.append("clf_entropy")
    names += [name for name in ("mahalanobis", "rmd") if getattr(config, name)]
    return names


def _build(name: str, config: OODConfig) -> Any:
    if name == "clf_entropy":
        return ClassifierEntropy(tuple(config.clf_c), seed=config.seed)
    return REGISTRY[name]()


def fit_ood(con: duckdb.DuckDBPyConnection, infos: list[ModelInfo], score_columns: list[str], config: OODConfig,
            where: str, described: str, sampler: Sampler) -> OODFit:
    """Thresholds for ``score_columns`` and the fitted embedding detectors, over the reference rows
    selected by the SQL condition ``where`` (see module docstring)."""
    fit = OODFit()
    fit.report["reference"] = described
    fit.report["in_distribution_quantile"] = config.in_distribution_quantile
    q = config.in_distribution_quantile
    for column in score_columns:
        value, n = con.execute(f'SELECT quantile_cont("{column}", {q}), count("{column}") FROM images WHERE {where}').fetchall()[0]
        if not n:
            log.info("%s: no reference scores, no threshold", column)
            continue
        fit.thresholds[column] = float(value)
        fit.report.setdefault("thresholds", {})[column] = {"threshold": float(value), "n_reference": int(n), "quantile": q}

    for info in infos:
        names = fitted_detectors(info, config)
        if not names:
            continue
        column = f"{EMBEDDING_PREFIX}{info.alias}"
        ids, labels, X = stratified_sample(sampler, where, column, config)
        classes = sorted(set(labels.tolist()))
        if len(classes) < 2:
            for name in names:
                log.info("score_%s_%s: skipped -- the reference rows carry %d labels (needs 2 or more)", name, info.alias, len(classes))
                fit.report.setdefault("skipped", {})[f"score_{name}_{info.alias}"] = f"{len(classes)} labels in the reference rows"
            continue
        con.register("_fit_ids", pa.table({"image_id": ids}))
        held_out = con.sql(
            f"""SELECT image_id, "{column}" AS v FROM images
                WHERE {where} AND "{column}" IS NOT NULL AND image_id NOT IN (SELECT image_id FROM _fit_ids)
                ORDER BY {hash_order(int(config.seed + 1))} LIMIT {int(config.threshold_sample)}"""
        ).to_arrow_table()
        con.unregister("_fit_ids")
        _, _, X_held = _unpack(held_out)
        source = "held-out reference rows"
        if len(X_held) == 0:
            X_held, source = X, "the fitting sample (no other reference rows)"
        for name in names:
            score_column = f"score_{name}_{info.alias}"
            detector = _build(name, config).fit(X, labels)
            value = float(np.quantile(detector.score(X_held).astype(np.float64), q))
            fit.thresholds[score_column] = value
            fit.fitted[score_column] = {"detector": name, "model": info.alias, "state": detector.state_dict()}
            fit.report.setdefault("thresholds", {})[score_column] = {
                "threshold": value, "n_reference": len(X_held), "quantile": q, "from": source,
            }
            fit.report.setdefault("fitted", {})[score_column] = {"n_fit": len(ids), "classes": len(classes)}
            log.info("%s: fitted on %d embeddings of %d classes; threshold %.4f", score_column, len(ids), len(classes), value)
    return fit
