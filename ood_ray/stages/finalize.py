"""Stage ``finalize`` of a run with models or an autoencoder (Ray Data over the staged rows, after
the fits).

Each staged part is read by one task (:func:`finalize_files`), which adds the fitted scores
(``score_<detector>_<model>`` of clf_entropy, Mahalanobis, RMD), the cluster and map columns,
confident learning's label issues (:func:`ood_ray.stages.label_issues.apply_label_issues`), ``score_recon``, and a flag ``is_ood_<score>`` (``score > threshold``; null where the score is null)
for every thresholded score; :class:`FinalizeSink` then writes ``images`` (without the internal
columns) and ``embeddings`` (one row per image and model). Workers rebuild the fitted detectors and
the autoencoder once per settings object (a cache keyed by the settings' token, not by identity).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.columns import (
    AUTOENCODER_PIXELS,
    EMBEDDING_PREFIX,
    embedding_column,
    embedding_matrix,
    flag_column,
    is_internal,
    scattered,
)
from ood_ray.detectors import REGISTRY
from ood_ray.io import storage
from ood_ray.run.sink import PartSink
from ood_ray.stages.base import Stage, StageResult
from ood_ray.stages.label_issues import apply_label_issues
from ood_ray.tables import EMBEDDINGS_SCHEMA


@dataclass(frozen=True)
class FinalizeSettings:
    thresholds: dict[str, float] = field(default_factory=dict)
    #: ``{score column: {"detector": name, "model": alias, "state": state_dict}}``
    fitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the cluster model's alias, its clusters and 2-D maps (see ood_ray.structure)
    structure_model: str | None = None
    clusters: Any = None
    outlier_zscore: float = 2.5
    projections: Any = None
    #: autoencoder weights (``score_recon``) and its bottleneck width
    autoencoder: bytes | None = None
    autoencoder_latent: int = 16
    autoencoder_size: int = 32
    retry: storage.RetryPolicy = storage.DEFAULT_RETRY
    #: confident learning's rules and the label model (:mod:`ood_ray.stages.label_issues`)
    label_issues: Any = None
    #: unique per settings object made on the driver (the workers' cache key)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


#: What a worker rebuilt from the settings of the run it last served (``token`` names the run's
#: settings: each task deserialises its own copy, so object identity cannot be the key).
_BUILT: dict[str, Any] = {}


def _built(settings: FinalizeSettings, name: str, build: Any) -> Any:
    if _BUILT.get("token") != settings.token:
        _BUILT.clear()
        _BUILT["token"] = settings.token
    if name not in _BUILT:
        _BUILT[name] = build()
    return _BUILT[name]


def _fitted(settings: FinalizeSettings) -> dict[str, tuple[str, Any, list[str]]]:
    """``{score column: (model alias, detector, member columns)}``, rebuilt once per worker process
    and run; the detectors over other scores (``members``: the fusion) come last."""
    return _built(settings, "fitted", lambda: dict(sorted(
        ((column, (entry["model"], REGISTRY[entry["detector"]].from_state_dict(entry["state"]), entry.get("members", [])))
         for column, entry in settings.fitted.items()), key=lambda item: bool(item[1][2]))))


def _member_matrix(batch: pa.Table, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows with at least one member score, float64[rows, M] with NaN for missing)``."""
    values = np.column_stack([pc.cast(batch.column(m), pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
                              for m in members])
    rows = np.flatnonzero(~np.all(np.isnan(values), axis=1))
    return rows, values[rows]


def _autoencoder(settings: FinalizeSettings) -> Any:
    from ood_ray.autoencoder.model import load_autoencoder

    return _built(settings, "autoencoder", lambda: load_autoencoder(settings.autoencoder, settings.autoencoder_latent))


def finalize_batch(batch: pa.Table, settings: FinalizeSettings) -> pa.Table:
    """Add the probe scores and every flag to one staged block."""
    n = batch.num_rows
    for column, (alias, detector, members) in _fitted(settings).items():
        if members:
            rows, X = _member_matrix(batch, members)
        else:
            rows, X = embedding_matrix(batch.column(embedding_column(alias)))
        values = np.zeros(n, np.float32)
        mask = np.ones(n, bool)
        if len(rows):
            values[rows] = detector.score(X)
            mask[rows] = False
        batch = batch.append_column(pa.field(column, pa.float32()), pa.array(values, mask=mask))
    batch = _add_structure(batch, settings)
    if settings.label_issues is not None:
        batch = apply_label_issues(batch, settings.label_issues)
    if settings.autoencoder is not None:
        batch = _add_recon(batch, settings)
    for column, threshold in settings.thresholds.items():
        if column in batch.column_names:
            flags = pc.greater(pc.cast(batch.column(column), pa.float64()), pa.scalar(float(threshold)))
            batch = batch.append_column(pa.field(flag_column(column), pa.bool_()), flags)
    return batch


def finalize_files(batch: pa.Table, settings: FinalizeSettings) -> pa.Table:
    """Read the staged parts named in ``batch`` and finalize each."""
    parts = []
    for uri in batch.column("uri").to_pylist():
        table = storage.read_parquet(uri, retry=settings.retry)
        parts.append(finalize_batch(table, settings))
    return pa.concat_tables(parts)


def _add_structure(batch: pa.Table, settings: FinalizeSettings) -> pa.Table:
    """``cluster``, ``cluster_distance``, ``score_cluster``, ``is_cluster_outlier``, ``x_<map>``, ``y_<map>``."""
    if settings.structure_model is None or (settings.clusters is None and settings.projections is None):
        return batch
    n = batch.num_rows
    rows, X = embedding_matrix(batch.column(embedding_column(settings.structure_model)))
    if settings.clusters is not None:
        if len(rows):
            cluster, distance, z = settings.clusters.assign(X)
        else:
            cluster, distance, z = np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        batch = batch.append_column(pa.field("cluster", pa.int32()), scattered(n, rows, cluster, np.int32))
        batch = batch.append_column(pa.field("cluster_distance", pa.float32()), scattered(n, rows, distance, np.float32))
        score = scattered(n, rows, z, np.float32)
        batch = batch.append_column(pa.field("score_cluster", pa.float32()), score)
        batch = batch.append_column(pa.field("is_cluster_outlier", pa.bool_()),
                                    pc.greater(pc.cast(score, pa.float64()), pa.scalar(float(settings.outlier_zscore))))
    if settings.projections is not None:
        ids = batch.column("image_id").take(pa.array(rows)).to_pylist() if len(rows) else []
        for name, values in settings.projections.transform(X, ids).items():
            batch = batch.append_column(pa.field(name, pa.float32()), scattered(n, rows, values, np.float32))
    return batch


def _add_recon(batch: pa.Table, settings: FinalizeSettings) -> pa.Table:
    """``score_recon``: the autoencoder's per-image mean squared reconstruction error."""
    from ood_ray.autoencoder.model import reconstruction_error

    column = batch.column(AUTOENCODER_PIXELS).combine_chunks()
    rows = np.flatnonzero(np.asarray(column.is_valid()))
    size = settings.autoencoder_size
    values = np.zeros(0, np.float32)
    if len(rows):
        blobs = column.take(pa.array(rows)).to_pylist()
        pixels = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(rows), size, size, 3)
        values = reconstruction_error(_autoencoder(settings), pixels)
    return batch.append_column(pa.field("score_recon", pa.float32()), scattered(batch.num_rows, rows, values, np.float32))


def embeddings_of(block: pa.Table) -> pa.Table:
    """Long-format ``embeddings`` rows of a block: one per image and model with a vector."""
    parts = []
    for name in block.column_names:
        if not name.startswith(EMBEDDING_PREFIX):
            continue
        column = block.column(name).combine_chunks()
        rows = np.flatnonzero(np.asarray(column.is_valid()))
        if len(rows) == 0:
            continue
        vectors = column.take(pa.array(rows))
        dim = vectors.type.list_size
        parts.append(pa.Table.from_pydict({
            "image_id": block.column("image_id").take(pa.array(rows)),
            "model": pa.array([name[len(EMBEDDING_PREFIX):]] * len(rows), pa.string()),
            "dim": pa.array(np.full(len(rows), dim, np.int32)),
            "embedding": pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1, dtype=np.int32) * dim), vectors.flatten()),
        }, schema=EMBEDDINGS_SCHEMA))
    return pa.concat_tables(parts) if parts else EMBEDDINGS_SCHEMA.empty_table()


class FinalizeSink(PartSink):
    """The final ``images`` (no internal columns) and ``embeddings`` part files."""

    TABLES = ("images", "embeddings")

    def split(self, block: pa.Table) -> dict[str, pa.Table]:
        images = block.drop_columns([c for c in block.column_names if is_internal(c)])
        return {"images": images, "embeddings": embeddings_of(block)}


class FinalizeStage(Stage):
    name = "finalize"
    reads = ("io", "ray", "cluster", "autoencoder")
    writes = ("images", "embeddings")

    def enabled(self, ctx: Any) -> bool:
        return "images" in ctx.staged

    def run(self, ctx: Any) -> StageResult:
        import ray

        from ood_ray.run.ray_runtime import configure_ray_data
        from ood_ray.stages.ood_fit import FittedScores

        cfg = ctx.section(self)
        fitted = ctx.values.get("ood_fit") or FittedScores()
        structure = ctx.values.get("structure")
        autoencoder = ctx.values.get("autoencoder")
        thresholds = dict(fitted.thresholds)
        if autoencoder is not None and autoencoder.threshold is not None:
            thresholds["score_recon"] = autoencoder.threshold
        settings = FinalizeSettings(
            thresholds, fitted.fitted, getattr(structure, "model", None), getattr(structure, "clusters", None),
            cfg.cluster.outlier_zscore, getattr(structure, "projections", None),
            getattr(autoencoder, "weights", None), cfg.autoencoder.latent_channels, cfg.autoencoder.image_size,
            ctx.retry, ctx.values.get("label_issues"))
        configure_ray_data(ctx.config)
        staged = ctx.images_uris()
        dataset = ray.data.from_items([{"uri": uri} for uri in staged]).map_batches(
            finalize_files, batch_size=1, batch_format="pyarrow", fn_kwargs={"settings": settings},
            num_cpus=cfg.ray.task_num_cpus)
        sink = FinalizeSink(ctx.layout.out, ctx.layout.run_id, retry=ctx.retry, compacted=cfg.io.compacts)
        with sink.progress("finalize", "images", ctx.inputs.num_rows, cfg.ray.progress_interval_s):
            sink.write_dataset(dataset, num_cpus=cfg.ray.task_num_cpus)
        files = {table: entries for table, entries in sink.files.items() if entries}
        files.setdefault("images", [])
        rows = sum(r for _, r in files["images"])
        if rows != ctx.inputs.num_rows:
            raise RuntimeError(f"counts do not reconcile after finalize: {ctx.inputs.num_rows} objects, {rows} rows")
        return StageResult(files=files, staged={"images": []}, state={"thresholds": thresholds})
