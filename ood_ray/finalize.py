"""The finalize pass of a run with models (Ray Data over the staged rows, after the fits).

Each staged block gets the fitted scores (``score_<detector>_<alias>`` of clf_entropy, Mahalanobis,
RMD) and a flag
``is_ood_<score>`` (``score > threshold``; null where the score is null) for every thresholded
score; :class:`FinalizeDatasink` then writes ``images`` (without the ``_emb_`` columns) and
``embeddings`` (one row per image and model) part files.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from ood_ray.detectors import REGISTRY
from ood_ray.embed.actor import EMBEDDING_PREFIX
from ood_ray.io.rundir import RunDirectory
from ood_ray.tables import AUTOENCODER_PIXELS, EMBEDDINGS_SCHEMA


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


def _fitted(settings: FinalizeSettings) -> dict[str, tuple[str, Any]]:
    """``{score column: (model alias, detector)}``, rebuilt once per worker process and run."""
    return _built(settings, "fitted", lambda: {
        column: (entry["model"], REGISTRY[entry["detector"]].from_state_dict(entry["state"]))
        for column, entry in settings.fitted.items()})


def _autoencoder(settings: FinalizeSettings) -> Any:
    from ood_ray.autoencoder.model import load_autoencoder

    return _built(settings, "autoencoder", lambda: load_autoencoder(settings.autoencoder, settings.autoencoder_latent))


def flag_name(score_column: str) -> str:
    """``score_msp_resnet18`` -> ``is_ood_msp_resnet18``."""
    return "is_ood_" + score_column[len("score_"):]


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(row indices, float32[n, D])`` of the non-null vectors of an embedding column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = np.flatnonzero(np.asarray(array.is_valid()))
    if len(rows) == 0:
        return rows, np.zeros((0, 0), np.float32)
    valid = array.take(pa.array(rows))
    dim = valid.type.list_size if pa.types.is_fixed_size_list(valid.type) else len(valid[0])
    return rows, valid.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), dim).astype(np.float32)


def finalize_batch(batch: pa.Table, settings: FinalizeSettings) -> pa.Table:
    """Add the probe scores and every flag to one staged block."""
    n = batch.num_rows
    for column, (alias, detector) in _fitted(settings).items():
        rows, X = embedding_matrix(batch.column(f"{EMBEDDING_PREFIX}{alias}"))
        values = np.zeros(n, np.float32)
        mask = np.ones(n, bool)
        if len(rows):
            values[rows] = detector.score(X)
            mask[rows] = False
        batch = batch.append_column(pa.field(column, pa.float32()), pa.array(values, mask=mask))
    batch = _add_structure(batch, settings)
    if settings.autoencoder is not None:
        batch = _add_recon(batch, settings)
    for column, threshold in settings.thresholds.items():
        if column in batch.column_names:
            flags = pc.greater(pc.cast(batch.column(column), pa.float64()), pa.scalar(float(threshold)))
            batch = batch.append_column(pa.field(flag_name(column), pa.bool_()), flags)
    return batch


def _scattered(n: int, rows: np.ndarray, values: np.ndarray, dtype: Any) -> pa.Array:
    """A length-``n`` column holding ``values`` at ``rows`` and null elsewhere (and where NaN)."""
    out = np.zeros(n, dtype)
    mask = np.ones(n, bool)
    out[rows] = values
    mask[rows] = np.isnan(values) if np.issubdtype(np.asarray(values).dtype, np.floating) else False
    return pa.array(out, mask=mask)


def _add_structure(batch: pa.Table, settings: FinalizeSettings) -> pa.Table:
    """``cluster``, ``cluster_distance``, ``score_cluster``, ``is_cluster_outlier``, ``x_<map>``, ``y_<map>``."""
    if settings.structure_model is None or (settings.clusters is None and settings.projections is None):
        return batch
    n = batch.num_rows
    rows, X = embedding_matrix(batch.column(f"{EMBEDDING_PREFIX}{settings.structure_model}"))
    if settings.clusters is not None:
        if len(rows):
            cluster, distance, z = settings.clusters.assign(X)
        else:
            cluster, distance, z = np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        batch = batch.append_column(pa.field("cluster", pa.int32()), _scattered(n, rows, cluster, np.int32))
        batch = batch.append_column(pa.field("cluster_distance", pa.float32()), _scattered(n, rows, distance, np.float32))
        score = _scattered(n, rows, z, np.float32)
        batch = batch.append_column(pa.field("score_cluster", pa.float32()), score)
        batch = batch.append_column(pa.field("is_cluster_outlier", pa.bool_()),
                                    pc.greater(pc.cast(score, pa.float64()), pa.scalar(float(settings.outlier_zscore))))
    if settings.projections is not None:
        ids = batch.column("image_id").take(pa.array(rows)).to_pylist() if len(rows) else []
        for name, values in settings.projections.transform(X, ids).items():
            batch = batch.append_column(pa.field(name, pa.float32()), _scattered(n, rows, values, np.float32))
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
    return batch.append_column(pa.field("score_recon", pa.float32()), _scattered(batch.num_rows, rows, values, np.float32))


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


class FinalizeDatasink(Datasink):
    """Writes the final ``images`` and ``embeddings`` part files of a run with models."""

    def __init__(self, out: str, run_id: str) -> None:
        self.out = out
        self.run_id = run_id
        self.files: dict[str, list[tuple[str, int]]] = {"images": [], "embeddings": []}

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, list[tuple[str, int]]]:
        run_dir = RunDirectory(self.out, self.run_id)
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        written: dict[str, list[tuple[str, int]]] = {"images": [], "embeddings": []}
        if not tables:
            return written
        block = pa.concat_tables(tables)
        part = f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
        images = block.drop_columns([c for c in block.column_names if c.startswith(EMBEDDING_PREFIX) or c == AUTOENCODER_PIXELS])
        written["images"].append((run_dir.write_part("images", part, images), images.num_rows))
        embeddings = embeddings_of(block)
        if embeddings.num_rows:
            written["embeddings"].append((run_dir.write_part("embeddings", part, embeddings), embeddings.num_rows))
        return written

    def on_write_complete(self, write_result: Any) -> None:
        for written in write_result.write_returns:
            for table, entries in written.items():
                self.files[table].extend(entries)
