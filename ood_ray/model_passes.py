"""The passes of a run with models, after the scan/embedding stage has staged its rows.

1. **kNN** (``knn.enabled``): shard actors over the reference embeddings (or the saved index of
   ``--reference``), then a Ray Data pass adding ``score_knn_*``/``score_knn_mean_*`` and writing
   ``neighbors`` and the embedding near-duplicate candidates.
2. **Fit** (driver, DuckDB): reference-split thresholds for every score and the fitted embedding
   detectors (clf_entropy, Mahalanobis, RMD; states saved under ``OUT/detectors/``) -- or, with
   ``--reference``, the thresholds and detectors of that run, so new data is judged by the
   reference's rules.
3. **Finalize** (Ray Data): probe scores, ``is_ood_*`` flags; ``images`` and ``embeddings``.

With ``--reference RUN_DIR`` the models are those of the reference run (their checkpoints must
hash the same), no row of the new data is treated as reference, and the reference is never
re-embedded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ood_ray.config import AuditConfig, ConfigError, ModelConfig, _build
from ood_ray.io.rundir import RunDirectory, read_run

log = logging.getLogger(__name__)


@dataclass
class ModelPassResult:
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    pairs: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    ood: dict[str, Any] = field(default_factory=dict)
    knn: dict[str, Any] = field(default_factory=dict)
    structure: Any = None


def reference_models(config: AuditConfig) -> tuple[list[ModelConfig], dict[str, Any] | None]:
    """The models to run and the reference run (``--reference``), checked before any work."""
    if not config.reference:
        return list(config.models), None
    try:
        run = read_run(config.reference)
    except FileNotFoundError as exc:
        raise ConfigError(f"reference={config.reference!r}: {exc}") from None
    saved = [_build(ModelConfig, m, f"reference.models[{i}]") for i, m in enumerate(run["config"].get("models", []))]
    if not saved:
        raise ConfigError(f"reference={config.reference!r}: that run has no models to score against")
    if config.models and [(m.name, m.column_alias) for m in config.models] != [(m.name, m.column_alias) for m in saved]:
        raise ConfigError(f"models: must be the reference run's models {[m.name for m in saved]} (or left out)")
    return saved, run


def check_reference_weights(infos: list, run: dict[str, Any]) -> None:
    """Refuse to compare embeddings made with other weights than the reference's."""
    saved = {m["alias"]: m for m in run.get("ood", {}).get("models", [])}
    for info in infos:
        before = saved.get(info.alias, {}).get("checkpoint_sha256")
        now = info.provenance.get("checkpoint_sha256")
        if before != now:
            raise ConfigError(f"model {info.alias!r}: checkpoint differs from the reference run's ({before} vs {now})")


def _staged_images_view(con: Any, uris: list[str]) -> None:
    from ood_ray.query import register_table

    register_table(con, "images", uris)


def run_knn(config: AuditConfig, con: Any, infos: list, run_dir: RunDirectory, staged: list[str],
            reference_run: dict | None, result: ModelPassResult) -> list[str]:
    """The kNN stage; returns the staged files of ``images`` with the kNN scores."""
    import ray

    from ood_ray.index.knn_pass import (
        KNNDatasink,
        KNNSettings,
        build_shards,
        load_saved_shards,
        query_staged_files,
        save_shards,
        saved_shard_count,
        start_shards,
    )
    from ood_ray.ood_fit import reference_filter
    from ood_ray.pipeline import _configure_ray_data

    knn = config.knn
    count = saved_shard_count(infos, reference_run) if reference_run is not None else knn.shards
    if count == 0:
        return staged
    shards = start_shards(count, knn)
    try:
        if reference_run is not None:
            models, result.knn = load_saved_shards(infos, reference_run, config.reference, staged, shards)
            reference_split, all_reference = None, False
        else:
            where, _ = reference_filter(con, config.ood)
            all_reference = "split =" not in where
            reference_split = None if all_reference else config.ood.reference_split
            models, result.knn = build_shards(con, infos, staged, where, reference_split, all_reference, knn, shards)
        if not models:
            return staged
        settings = KNNSettings(tuple(models), reference_split, all_reference, knn.neighbors_stored,
                               knn.duplicate_neighbors, knn.duplicate_similarity)
        _configure_ray_data(config)
        # One task per staged file, reading it itself: no listing task, and a fraction of a CPU each,
        # since the shard actors hold the rest while they serve.
        dataset = ray.data.from_items([{"uri": uri} for uri in staged]).map_batches(
            query_staged_files, batch_size=1, batch_format="pyarrow", num_cpus=knn.query_num_cpus,
            fn_kwargs={"settings": settings, "rows": knn.query_rows})
        sink = KNNDatasink(run_dir.out, run_dir.run_id, [m.alias for m in models])
        dataset.write_datasink(sink, ray_remote_args={"num_cpus": knn.query_num_cpus})
        if reference_run is None:
            result.artifacts += save_shards(models, run_dir, result.knn)
    finally:
        for shard in shards:
            ray.kill(shard)
    if sink.files["neighbors"]:
        result.files["neighbors"] = sink.files["neighbors"]
    result.pairs = [uri for uri, _ in sink.files["pairs"]]
    return [uri for uri, _ in sink.files["images"]]


def save_fitted(fitted: dict[str, dict[str, Any]], run_dir: RunDirectory, result: ModelPassResult) -> dict[str, Any]:
    """Write each fitted detector's state to ``OUT/detectors/`` (an artifact of the run)."""
    import json

    from ood_ray.io import storage

    listed = {}
    for column, entry in fitted.items():
        name = f"detectors/{column}-{run_dir.run_id}.json"
        uri = storage.join(run_dir.out, name)
        storage.write_bytes_atomic(uri, json.dumps(entry["state"]).encode())
        result.artifacts.append(uri)
        listed[column] = {"detector": entry["detector"], "model": entry["model"], "file": name}
    return listed


def load_fitted(detectors: dict[str, Any], out: str) -> dict[str, dict[str, Any]]:
    """The fitted detectors of a committed run, read back from its artifacts."""
    import json

    from ood_ray.io import storage

    return {column: {"detector": e["detector"], "model": e["model"],
                     "state": json.loads(storage.read_bytes(storage.join(out, e["file"])))}
            for column, e in detectors.items()}


def run_autoencoder(config: AuditConfig, con: Any, run_dir: RunDirectory, reference_run: dict | None,
                    result: ModelPassResult) -> Any:
    """Train the autoencoder on the reference images (or load the reference run's) -- ``score_recon``."""
    from ood_ray.autoencoder.fit import AutoencoderFit, fit_autoencoder
    from ood_ray.io import storage
    from ood_ray.io.rundir import STAGING
    from ood_ray.ood_fit import reference_filter

    if not config.autoencoder.enabled:
        return AutoencoderFit()
    if reference_run is not None:
        saved = reference_run.get("ood", {}).get("autoencoder", {})
        if not saved.get("file"):
            log.info("score_recon skipped: the reference run has no autoencoder")
            return AutoencoderFit(report={"skipped": "the reference run has no autoencoder"})
        return AutoencoderFit(storage.read_bytes(storage.join(config.reference, saved["file"])), saved.get("threshold"),
                              {**saved, "from": f"reference run {reference_run['run_id']}"})
    where, _ = reference_filter(con, config.ood)
    fit = fit_autoencoder(con, where, config, storage.join(run_dir.out, STAGING, run_dir.run_id, "train"))
    if fit.weights is not None:
        name = f"autoencoder/autoencoder-{run_dir.run_id}.pt"
        uri = storage.join(run_dir.out, name)
        storage.write_bytes_atomic(uri, fit.weights)
        result.artifacts.append(uri)
        fit.report["file"] = name
    return fit


def structure_pass(config: AuditConfig, con: Any, infos: list, run_dir: RunDirectory, reference_run: dict | None,
                   result: ModelPassResult) -> Any:
    """Clusters and maps: fitted here and saved (``OUT/detectors/structure-*.json``), or with
    ``--reference`` the reference run's clusters and PCA axes applied to the new data."""
    import json

    from ood_ray.io import storage
    from ood_ray.structure import (
        StructureFit,
        fit_structure,
        load_structure,
        structure_state,
    )

    if not infos:
        return StructureFit()
    saved = (reference_run or {}).get("structure", {}).get("file")
    if saved:
        state = json.loads(storage.read_bytes(storage.join(config.reference, saved)))
        return load_structure(state, con, config, f"reference run {reference_run['run_id']}")
    fit = fit_structure(con, config, [info.alias for info in infos])
    if fit.clusters is not None or fit.projections is not None:
        name = f"detectors/structure-{run_dir.run_id}.json"
        uri = storage.join(run_dir.out, name)
        storage.write_bytes_atomic(uri, json.dumps(structure_state(fit)).encode())
        result.artifacts.append(uri)
        fit.report["file"] = name
    return fit


def run_model_passes(config: AuditConfig, con: Any, infos: list, run_dir: RunDirectory, staged: list[str],
                     reference_run: dict | None, timer: Any) -> ModelPassResult:
    """kNN, fit (or reuse), finalize -- see module docstring."""
    from ood_ray.embed.actor import ensemble_members, score_columns
    from ood_ray.finalize import FinalizeSettings
    from ood_ray.index.knn_pass import knn_score_columns
    from ood_ray.ood_fit import fit_ood
    from ood_ray.pipeline import run_finalize

    result = ModelPassResult()
    if config.knn.enabled and infos:
        with timer.stage("knn"):
            staged = run_knn(config, con, infos, run_dir, staged, reference_run, result)
        _staged_images_view(con, staged)
    columns = score_columns(infos) + knn_score_columns([alias for alias, entry in result.knn.items() if "k" in entry])
    if reference_run is None:
        with timer.stage("ood_fit"):
            fit = fit_ood(con, infos, columns, config.ood)
        thresholds, fitted, report = fit.thresholds, fit.fitted, fit.report
        detectors = save_fitted(fitted, run_dir, result)
    else:
        saved = reference_run.get("ood", {})
        thresholds = {name: entry["threshold"] for name, entry in saved.get("thresholds", {}).items()}
        detectors = saved.get("detectors", {})
        fitted = load_fitted(detectors, config.reference)
        report = {"reference": f"run {reference_run['run_id']} in {config.reference}", "thresholds": saved.get("thresholds", {}),
                  "in_distribution_quantile": saved.get("in_distribution_quantile")}
    with timer.stage("structure"):
        result.structure = structure_pass(config, con, infos, run_dir, reference_run, result)
    with timer.stage("autoencoder"):
        autoencoder = run_autoencoder(config, con, run_dir, reference_run, result)
    if autoencoder.threshold is not None and reference_run is None:
        thresholds["score_recon"] = autoencoder.threshold
        report.setdefault("thresholds", {})["score_recon"] = {
            "threshold": autoencoder.threshold, "n_reference": autoencoder.report.get("n_threshold"),
            "quantile": config.ood.in_distribution_quantile, "from": autoencoder.report.get("threshold_from")}
    structure = result.structure
    settings = FinalizeSettings(thresholds, fitted, structure.model, structure.clusters, config.cluster.outlier_zscore,
                                structure.projections, autoencoder.weights, config.autoencoder.latent_channels,
                                config.autoencoder.image_size)
    with timer.stage("finalize"):
        result.files.update(run_finalize(config, run_dir, staged, settings))
    if autoencoder.report:
        report["autoencoder"] = autoencoder.report
    result.ood = {**report, "detectors": detectors, "ensemble_members": [info.alias for info in ensemble_members(infos)],
                  "models": [{"alias": i.alias, "embedding_dim": i.embedding_dim, "num_classes": i.num_classes,
                              "preprocessing": i.data_config, **i.provenance} for i in infos]}
    return result
