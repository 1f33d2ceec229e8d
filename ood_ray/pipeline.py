"""The audit job: manifest -> Ray Data scan -> global passes -> committed run directory.

1. **Manifest** (driver): list the folder/prefix or read the manifest; assign ``image_id``.
2. **Scan** (Ray Data): the manifest is cut into blocks of ``io.rows_per_block`` rows; a
   ``map_batches`` task per block fetches the bytes *in the worker* (threads for S3 latency),
   decodes each row once inside its own error handling and computes every statistic and hash;
   :class:`ood_ray.io.sink.ScanDatasink` writes ``images`` and ``channels`` part files.
3. **Global passes** (driver, DuckDB over the written files): lint thresholds and flags,
   duplicate groups.
4. **Commit**: ``run.json`` written last (see :mod:`ood_ray.io.rundir`).

Counts reconcile: the job fails (and commits nothing) if ``images`` rows != objects in.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import pyarrow as pa

from ood_ray.config import AuditConfig
from ood_ray.io.memory import default_decode_budget
from ood_ray.io.rundir import RunDirectory
from ood_ray.io.sources import build_manifest
from ood_ray.tables import RESERVED_COLUMNS

log = logging.getLogger(__name__)

_VERSIONED = ("ood-ray", "ray", "pyarrow", "numpy", "pillow", "duckdb", "scipy")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class StageTimer:
    """Wall-clock seconds per named stage, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
            log.info("stage %s: %.2fs", name, self.seconds[name])


def init_ray(config: AuditConfig) -> None:
    """Connect to ``--address``/``RAY_ADDRESS`` or start a local Ray (reused if already up)."""
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if config.ray.num_cpus:
        kwargs["num_cpus"] = config.ray.num_cpus
    if config.ray.object_store_memory_mb:
        kwargs["object_store_memory"] = config.ray.object_store_memory_mb * 1024 * 1024
    log.info("starting a local Ray")
    ray.init(**kwargs)


def _no_extra_remote_args() -> dict[str, Any]:
    return {}


def _manifest_blocks(manifest: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [manifest.slice(i, rows_per_block) for i in range(0, manifest.num_rows, rows_per_block)] or [manifest]


def _configure_ray_data(config: AuditConfig) -> None:
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_no_progress_timeout_s = config.ray.no_progress_timeout_s
    context.wait_for_min_actors_s = config.ray.no_progress_timeout_s
    context.op_resource_reservation_enabled = config.ray.op_resource_reservation
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def run_scan(config: AuditConfig, manifest: pa.Table, run_dir: RunDirectory, infos: list | None = None) -> dict[str, Any]:
    """The distributed pass (decode + statistics, then embeddings when there are models);
    returns written files, status counts and worker-side seconds."""
    import ray

    from ood_ray.embed.preprocess import preprocessing_key
    from ood_ray.io.sink import ScanDatasink
    from ood_ray.progress import ProgressLogger, ProgressTracker
    from ood_ray.scan import ScanSettings, scan_batch

    _configure_ray_data(config)
    infos = infos or []
    model_inputs = {preprocessing_key(info.data_config): info.data_config for info in infos}
    settings = ScanSettings(
        max_pixels=config.io.max_pixels,
        max_file_bytes=config.io.max_file_bytes,
        fetch_threads=config.io.fetch_threads,
        per_channel_sharpness=config.stats.per_channel_sharpness,
        model_inputs=tuple(model_inputs.items()),
        autoencoder_size=config.autoencoder.image_size if config.autoencoder.enabled else 0,
        max_decode_bytes=config.io.max_decode_bytes,
        all_frames=config.io.check_all_frames,
        task_num_cpus=config.ray.task_num_cpus,
        run_id=run_dir.run_id,
    )
    tracker = ProgressTracker.remote()
    dataset = ray.data.from_arrow(_manifest_blocks(manifest, config.io.rows_per_block))
    dataset = dataset.map_batches(
        scan_batch,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"settings": settings, "progress": tracker},
        num_cpus=config.ray.task_num_cpus,
        # Ray Data fuses a task map into a following actor map when their remote args match,
        # which would move decoding into the (few) embedding actors. An op with a
        # ray_remote_args_fn is never fused: decoding stays in parallel CPU tasks.
        ray_remote_args_fn=_no_extra_remote_args,
    )
    if infos:
        from ood_ray.embed.actor import EmbedActor, EmbedSettings

        embed = config.embed
        dataset = dataset.map_batches(
            EmbedActor,
            batch_format="pyarrow",
            batch_size=embed.batch_size,
            fn_constructor_kwargs={"infos": infos, "settings": EmbedSettings(
                top_k=embed.top_k, max_full_probabilities=embed.max_full_probabilities,
                num_cpus=embed.num_cpus_per_actor, num_gpus=embed.num_gpus_per_actor)},
            compute=ray.data.ActorPoolStrategy(size=embed.num_actors),
            num_cpus=embed.num_cpus_per_actor,
            num_gpus=embed.num_gpus_per_actor or None,
        )
    sink = ScanDatasink(run_dir.out, run_dir.run_id, staged=bool(infos) or config.autoencoder.enabled)
    with ProgressLogger(tracker, manifest.num_rows, config.ray.progress_interval_s):
        dataset.write_datasink(sink)
    totals = ray.get(tracker.totals.remote())
    ray.kill(tracker)
    return {"files": sink.files, "statuses": sink.statuses, "worker_seconds": {
        "fetch": round(totals["fetch_seconds"], 3), "decode_and_stats": round(totals["scan_seconds"], 3)}}


def run_finalize(config: AuditConfig, run_dir: RunDirectory, staged: list[str], settings: Any) -> dict[str, list]:
    """Scores that needed a fit, and flags, over the staged rows; writes images + embeddings."""
    import ray

    from ood_ray.finalize import FinalizeDatasink, finalize_batch
    from ood_ray.io import storage

    _configure_ray_data(config)
    fs, _ = storage.resolve(staged[0])
    dataset = ray.data.read_parquet([storage.resolve(uri)[1] for uri in staged], filesystem=fs)
    dataset = dataset.map_batches(finalize_batch, batch_format="pyarrow", batch_size=None,
                                  fn_kwargs={"settings": settings}, num_cpus=config.ray.task_num_cpus)
    sink = FinalizeDatasink(run_dir.out, run_dir.run_id)
    dataset.write_datasink(sink)
    return sink.files


def run_drift_pass(config: AuditConfig, con: Any, files: dict[str, list[tuple[str, int]]], infos: list,
                   structure: Any, run_dir: RunDirectory) -> dict[str, Any]:
    """Table ``drift`` (see :mod:`ood_ray.drift.drift_pass`): against the reference split of this run,
    or every row against the ``--reference`` run's reference rows; skipped when there is neither."""
    from ood_ray.drift.drift_pass import run_drift
    from ood_ray.ood_fit import reference_filter
    from ood_ray.query import connect, register_table
    from ood_ray.tables import EMBEDDINGS_SCHEMA

    register_table(con, "embeddings", [uri for uri, _ in files.get("embeddings", [])], EMBEDDINGS_SCHEMA)
    reference_con = None
    if config.reference:
        from ood_ray.config import OODConfig, _build
        from ood_ray.io.rundir import read_run

        reference_run = read_run(config.reference)
        reference_con = connect(config.reference, reference_run)
        reference_where, _ = reference_filter(reference_con, _build(OODConfig, reference_run["config"].get("ood", {}), "ood"))
        new_where, described = "status = 'ok'", f"every ok row against run {reference_run['run_id']}"
    else:
        reference_where, described = reference_filter(con, config.ood)
        if "split =" not in reference_where:
            log.info("drift skipped: no rows in the reference split %r (and no --reference run)", config.ood.reference_split)
            return {"skipped": f"no rows in reference split {config.ood.reference_split!r}"}
        split = config.ood.reference_split.replace("'", "''")
        new_where = f"status = 'ok' AND split IS DISTINCT FROM '{split}'"
        described = f"every other split against split {config.ood.reference_split!r}"
    started = time.perf_counter()
    models = [info.alias for info in infos]
    try:
        drift = run_drift(con, reference_where, new_where, config, models,
                          structure.model if structure is not None else None, reference_con)
    finally:
        if reference_con is not None:
            reference_con.close()
    files["drift"] = [(run_dir.write_part("drift", "00000", drift), drift.num_rows)]
    drifted: dict[str, list[str]] = {}
    for r in drift.to_pylist():
        if r["drifted"]:
            drifted.setdefault(r["split"], []).append(f"{r['test']}:{r['feature']}")
    return {"compared": described, "tests": drift.num_rows, "drifted": sum(len(v) for v in drifted.values()),
            "drifted_by_split": drifted,
            "correction": config.drift.correction, "alpha": config.drift.alpha,
            "seconds": round(time.perf_counter() - started, 3)}


def run_audit(config: AuditConfig) -> dict[str, Any]:
    """Run the whole audit described by ``config``; returns the committed ``run.json``."""
    import duckdb

    from ood_ray.dedup.hash_groups import run_dedup
    from ood_ray.lint.linter import run_lint
    from ood_ray.query import register_table

    timer = StageTimer()
    started = time.perf_counter()
    run_dir = RunDirectory(config.out)
    run_dir.check_writable(config.overwrite)
    listing: dict[str, Any] = {}
    with timer.stage("manifest"):
        manifest = build_manifest(config, RESERVED_COLUMNS, listing)
    infos = []
    reference_run = None
    if config.models or config.reference:
        from ood_ray.embed.models import inspect_models
        from ood_ray.model_passes import check_reference_weights, reference_models

        with timer.stage("models"):
            specs, reference_run = reference_models(config)
            infos = inspect_models(specs)
            if reference_run is not None:
                check_reference_weights(infos, reference_run)
    log.info("run %s: %d objects from %s -> %s", run_dir.run_id, manifest.num_rows, config.source, run_dir.out)
    init_ray(config)

    with timer.stage("scan"):
        scan = run_scan(config, manifest, run_dir, infos)
    files: dict[str, list[tuple[str, int]]] = {table: entries for table, entries in scan["files"].items() if entries}
    rows_out = sum(rows for _, rows in files["images"])
    if rows_out != manifest.num_rows:
        raise RuntimeError(f"counts do not reconcile: {manifest.num_rows} objects in, {rows_out} image rows out")

    con = duckdb.connect()
    register_table(con, "images", [uri for uri, _ in files["images"]])
    ood_report: dict[str, Any] = {}
    knn_report: dict[str, Any] = {}
    embedding_groups = None
    artifacts: list[str] = []
    structure = None
    if infos or config.autoencoder.enabled:
        from ood_ray.model_passes import run_model_passes

        passes = run_model_passes(config, con, infos, run_dir, [uri for uri, _ in files.pop("images")], reference_run, timer)
        files.update(passes.files)
        ood_report, knn_report, artifacts, structure = passes.ood, passes.knn, passes.artifacts, passes.structure
        if sum(rows for _, rows in files["images"]) != manifest.num_rows:
            raise RuntimeError("counts do not reconcile after the model passes")
        if passes.pairs and config.dedup.enabled:
            from ood_ray.dedup.embedding_groups import embedding_groups as group_pairs
            from ood_ray.dedup.embedding_groups import unique_pairs

            register_table(con, "_pairs", passes.pairs)
            pairs = unique_pairs(con)
            files["duplicate_pairs"] = [(run_dir.write_part("duplicate_pairs", "00000", pairs), pairs.num_rows)]
            embedding_groups = group_pairs(pairs)
    thresholds: dict[str, Any] = {}
    dedup_summary: dict[str, Any] = {}
    if config.lint.enabled:
        with timer.stage("lint"):
            lint, thresholds = run_lint(con, config.lint)
            files["lint"] = [(run_dir.write_part("lint", "00000", lint), lint.num_rows)]
    if config.dedup.enabled:
        with timer.stage("dedup"):
            duplicates, dedup_summary = run_dedup(con, config.dedup, embedding_groups)
            files["duplicates"] = [(run_dir.write_part("duplicates", "00000", duplicates), duplicates.num_rows)]
    register_table(con, "images", [uri for uri, _ in files["images"]])
    structure_report: dict[str, Any] = {}
    if structure is not None and structure.model is not None:
        structure_report = structure.report
        if structure.clusters is not None:
            from ood_ray.structure import clusters_table

            with timer.stage("clusters_table"):
                clusters = clusters_table(con, structure.clusters)
                files["clusters"] = [(run_dir.write_part("clusters", "00000", clusters), clusters.num_rows)]
    drift_report: dict[str, Any] = {}
    if config.drift.enabled:
        with timer.stage("drift"):
            drift_report = run_drift_pass(config, con, files, infos, structure, run_dir)
    con.close()

    timer.seconds["total_before_commit"] = round(time.perf_counter() - started, 3)
    run_info = {
        "source": config.source,
        "objects_in": manifest.num_rows,
        "rows_out": rows_out,
        "status_counts": dict(sorted(scan["statuses"].items())),
        "stage_seconds": timer.seconds,
        "worker_seconds": scan["worker_seconds"],
        "images_per_second": round(manifest.num_rows / timer.seconds["scan"], 2) if timer.seconds.get("scan") else None,
        "listing": listing,
        "max_decode_bytes": config.io.max_decode_bytes or default_decode_budget(config.ray.task_num_cpus),
        "lint_thresholds": thresholds,
        "dedup": dedup_summary,
        "ood": ood_report,
        "knn": knn_report,
        "structure": structure_report,
        "drift": drift_report,
        "config": config.to_dict(),
        "versions": package_versions(),
    }
    run = run_dir.commit(files, run_info, artifacts)
    log.info("committed run %s: %d images, statuses %s", run_dir.run_id, rows_out, run["status_counts"])
    return run
