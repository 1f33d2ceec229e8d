"""Fitting the model-based OOD scores on the reference split (driver, DuckDB over staged rows).

- **Thresholds**: for every score column, the linear ``q``-quantile (NumPy's default, DuckDB's
  ``quantile_cont``) over all the reference rows (split ``ood.reference_split``; all ``ok`` rows
  when no row has that split -- the selection the scan stage records): by DuckDB on the driver up
  to ``ood.driver_quantile_max_rows`` rows, past it by Ray tasks from mergeable summaries
  (:mod:`ood_ray.score_quantiles`; the same numbers).
- **Fitted embedding detectors** (clf_entropy, Mahalanobis, RMD, Mahalanobis++, RMD++; when
  labels exist): a stratified sample of labelled reference embeddings -- at most
  ``ood.clf_max_per_class`` per label, at most ``ood.clf_max_samples`` in all, picked by a seeded
  hash of ``image_id`` so a run is reproducible -- fits each detector; its threshold is the
  quantile over up to ``ood.threshold_sample`` *other* reference rows (held out from the fit, so
  the fit does not lower it), drawn part by part like the fitting sample.
- **Head detectors** (``ood.head_detectors``: ReAct, ASH-S, SCALE, fDBD, ViM, NNGuide) for every
  classifier whose last layer is linear (:func:`ood_ray.embed.models.classifier_head`, read on the
  driver): the head ``(W, b)`` goes into each detector's state, the fitted parts (ReAct's clipping
  percentile, fDBD's mean, ViM's subspace and alpha, NNGuide's bank of ``ood.nnguide_bank`` rows)
  come from the same sample (labels not needed: without them, a seeded sample of the reference
  rows), the threshold from the held-out rows; ``finalize`` applies them to every embedding.

- **Fusion** (``score_fusion``, :class:`ood_ray.detectors.fusion.CDFFusion`): the ``ood.fusion``
  members of one model on up to ``threshold_sample`` reference rows held out from the fitting
  sample (a third seeded order); the members' CDFs come from the even rows of that sample, the
  fusion's threshold from the odd ones, so neither is fitted on the rows it is judged by.

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
from ood_ray.score_quantiles import exact_quantiles
from ood_ray.detectors import REGISTRY
from ood_ray.detectors.clf_entropy import ClassifierEntropy
from ood_ray.columns import EMBEDDING_PREFIX
from ood_ray.embed.models import ModelInfo, classifier_head

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


def held_out_sample(sampler: Sampler, where: str, column: str, fitted_ids: set[str], config: OODConfig,
                    extra: list[str] = (), order: int = 1) -> pa.Table:
    """Up to ``threshold_sample`` reference rows outside the fitting sample, ordered by another
    seeded hash (``seed + order``): the first ``threshold_sample + len(fitted_ids)`` rows of that
    order (drawn part by part) hold them all, so the fitted rows are dropped after the draw.
    Columns: ``image_id``, ``v`` (``column``) and ``extra``."""
    table = sampler.select([column, *extra], f'{where} AND "{column}" IS NOT NULL', hash_order(int(config.seed + order)),
                           int(config.threshold_sample) + len(fitted_ids))
    keep = pa.array([image_id not in fitted_ids for image_id in table.column("image_id").to_pylist()], pa.bool_())
    table = table.filter(keep).slice(0, int(config.threshold_sample))
    return table.rename_columns(["image_id", "v", *table.column_names[2:]])


def score_thresholds(con: duckdb.DuckDBPyConnection, sampler: Sampler, columns: list[str], where: str,
                     config: OODConfig) -> dict[str, tuple[float, int]]:
    """``{column: (q-quantile over the reference rows, n)}`` (see module docstring)."""
    q = config.in_distribution_quantile
    if not columns:
        return {}
    n_rows = con.execute(f"SELECT count(*) FROM images WHERE {where}").fetchall()[0][0]
    if n_rows > config.driver_quantile_max_rows:
        log.info("score thresholds over %d reference rows: by Ray tasks (ood.driver_quantile_max_rows = %d)",
                 n_rows, config.driver_quantile_max_rows)
        found = exact_quantiles(sampler.parts, columns, where, q)
    else:
        found = {}
        for column in columns:
            value, n = con.execute(f'SELECT quantile_cont("{column}", {q}), count("{column}") '
                                   f'FROM images WHERE {where} AND NOT isnan("{column}")').fetchall()[0]
            if n:
                found[column] = (float(value), int(n))
    for column in columns:
        if column not in found:
            log.info("%s: no reference scores, no threshold", column)
    return found


def fitted_detectors(info: ModelInfo, config: OODConfig) -> list[str]:
    """Which label-fitted embedding detectors apply to a model (see :class:`OODConfig`)."""
    names = []
    if config.clf_entropy == "all" or (config.clf_entropy == "headless" and info.num_classes == 0):
        names.append("clf_entropy")
    names += [name for name in ("mahalanobis", "rmd", "mahalanobis_pp", "rmd_pp") if getattr(config, name)]
    return names


def plain_sample(sampler: Sampler, where: str, column: str, config: OODConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(image_ids, [], embeddings)`` of a seeded sample of reference rows, labels or not."""
    table = sampler.select([column], f'{where} AND "{column}" IS NOT NULL', hash_order(int(config.seed)),
                           config.clf_max_samples)
    return _unpack(table.rename_columns(["image_id", "v"]))


def _build(name: str, config: OODConfig, head: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    if name == "clf_entropy":
        return ClassifierEntropy(tuple(config.clf_c), seed=config.seed)
    detector = REGISTRY[name]()
    if head is not None:
        detector.with_head(*head)
    return detector


def _fit_one(fit: OODFit, name: str, info: ModelInfo, config: OODConfig, X: np.ndarray, labels: np.ndarray | None,
             X_held: np.ndarray, source: str, head: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Fit detector ``name`` for ``info`` on ``X``, threshold it on ``X_held``, record it."""
    score_column = f"score_{name}_{info.alias}"
    if name == "nnguide":
        X = X[: config.nnguide_bank]
    detector = _build(name, config, head).fit(X, labels)
    value = float(np.quantile(detector.score(X_held).astype(np.float64), config.in_distribution_quantile))
    fit.thresholds[score_column] = value
    fit.fitted[score_column] = {"detector": name, "model": info.alias, "state": detector.state_dict()}
    fit.report.setdefault("thresholds", {})[score_column] = {
        "threshold": value, "n_reference": len(X_held), "quantile": config.in_distribution_quantile, "from": source,
    }
    classes = len(set(labels.tolist())) if labels is not None and len(labels) else 0
    fit.report.setdefault("fitted", {})[score_column] = {"n_fit": len(X), "classes": classes}
    log.info("%s: fitted on %d embeddings; threshold %.4f", score_column, len(X), value)


def fusion_model(infos: list[ModelInfo], config: OODConfig) -> ModelInfo | None:
    """The model whose scores are fused: ``ood.fusion_model``, else the first classifier."""
    if not config.fusion:
        return None
    for info in infos:
        if (config.fusion_model is None and info.num_classes > 0) or info.alias == config.fusion_model:
            return info
    return None


def fit_fusion(fit: OODFit, infos: list[ModelInfo], score_columns: list[str], config: OODConfig, where: str,
               sampler: Sampler, fitting_ids: dict[str, set[str]]) -> None:
    """``score_fusion`` of the module docstring, recorded in ``fit`` (skipped, with the reason, when
    a member is missing)."""
    from ood_ray.detectors.fusion import CDFFusion

    info = fusion_model(infos, config)
    if info is None:
        if config.fusion:
            fit.report.setdefault("skipped", {})["score_fusion"] = "no classifier to fuse the scores of"
        return
    wanted = [f"score_{name}_{info.alias}" for name in config.fusion]
    missing = [m for m in wanted if m not in score_columns and m not in fit.fitted]
    members = [m for m in wanted if m not in missing]
    if len(members) < min(2, len(wanted)):
        log.info("score_fusion: skipped -- %s not computed in this run", ", ".join(missing))
        fit.report.setdefault("skipped", {})["score_fusion"] = f"members not in the run: {', '.join(missing)}"
        return
    if missing:  # e.g. Mahalanobis++ without labels, ViM without a classifier head: fuse the others
        log.info("score_fusion: %s not computed in this run; fusing %s", ", ".join(missing), ", ".join(members))
    column = f"{EMBEDDING_PREFIX}{info.alias}"
    stored = [m for m in members if m in score_columns]
    table = held_out_sample(sampler, where, column, fitting_ids.get(info.alias, set()), config, stored, order=2)
    source = "held-out reference rows"
    if table.num_rows < 4:  # every reference row is in the fitting sample (a small reference split)
        table = held_out_sample(sampler, where, column, set(), config, stored, order=2)
        source = "the fitting sample (no other reference rows)"
    if table.num_rows < 4:
        fit.report.setdefault("skipped", {})["score_fusion"] = f"{table.num_rows} reference rows"
        return
    _, _, embeddings = _unpack(table.select(["image_id", "v"]))
    values = []
    for member in members:
        if member in stored:
            values.append(table.column(member).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
        else:
            entry = fit.fitted[member]
            values.append(REGISTRY[entry["detector"]].from_state_dict(entry["state"]).score(embeddings).astype(np.float64))
    X = np.column_stack(values)
    fusion = CDFFusion(config.fusion_method).fit(X[0::2])
    threshold = float(np.quantile(fusion.score(X[1::2]).astype(np.float64), config.in_distribution_quantile))
    fit.thresholds["score_fusion"] = threshold
    fit.fitted["score_fusion"] = {"detector": "fusion", "model": info.alias, "members": members, "state": fusion.state_dict()}
    fit.report.setdefault("thresholds", {})["score_fusion"] = {
        "threshold": threshold, "n_reference": len(X[1::2]), "quantile": config.in_distribution_quantile,
        "from": f"{source} (the odd half; the CDFs from the even half)"}
    fit.report["fusion"] = {"members": members, "method": config.fusion_method, "model": info.alias,
                            "n_cdf": len(X[0::2]), "n_threshold": len(X[1::2]), "missing": missing}
    log.info("score_fusion: %s of %s; threshold %.4f", config.fusion_method, ", ".join(members), threshold)


def fit_ood(con: duckdb.DuckDBPyConnection, infos: list[ModelInfo], score_columns: list[str], config: OODConfig,
            where: str, described: str, sampler: Sampler) -> OODFit:
    """Thresholds for ``score_columns`` and the fitted embedding detectors, over the reference rows
    selected by the SQL condition ``where`` (see module docstring)."""
    fit = OODFit()
    fit.report["reference"] = described
    fit.report["in_distribution_quantile"] = config.in_distribution_quantile
    q = config.in_distribution_quantile
    for column, (value, n) in score_thresholds(con, sampler, score_columns, where, config).items():
        fit.thresholds[column] = value
        fit.report.setdefault("thresholds", {})[column] = {"threshold": value, "n_reference": n, "quantile": q}

    fitting_ids: dict[str, set[str]] = {}
    for info in infos:
        names = fitted_detectors(info, config)
        head = classifier_head(info) if config.head_detectors and info.num_classes > 0 else None
        head_names = list(config.head_detectors) if head is not None else []
        if not names and not head_names:
            continue
        column = f"{EMBEDDING_PREFIX}{info.alias}"
        ids, labels, X = stratified_sample(sampler, where, column, config) if names else ([], np.array([]), np.zeros((0, 0)))
        classes = sorted(set(labels.tolist()))
        if names and len(classes) < 2:
            for name in names:
                log.info("score_%s_%s: skipped -- the reference rows carry %d labels (needs 2 or more)", name, info.alias, len(classes))
                fit.report.setdefault("skipped", {})[f"score_{name}_{info.alias}"] = f"{len(classes)} labels in the reference rows"
            names = []
        if not names:
            if not head_names:
                continue
            ids, labels, X = plain_sample(sampler, where, column, config)
            labels = None
        if len(X) == 0:
            continue
        fitting_ids[info.alias] = set(ids)
        _, _, X_held = _unpack(held_out_sample(sampler, where, column, set(ids), config))
        source = "held-out reference rows"
        if len(X_held) == 0:
            X_held, source = X, "the fitting sample (no other reference rows)"
        for name in names:
            _fit_one(fit, name, info, config, X, labels, X_held, source)
        for name in head_names:
            _fit_one(fit, name, info, config, X, labels, X_held, source, head)
    fit_fusion(fit, infos, score_columns, config, where, sampler, fitting_ids)
    return fit
