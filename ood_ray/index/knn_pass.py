"""The kNN stage of a run with models: shard actors, then a distributed query pass.

1. :func:`build_shards` (driver): counts the reference vectors of each model, plans the index
   (:mod:`ood_ray.index.planner`, logged with its memory estimate), trains an IVF template on a
   sample when the plan asks for one, and starts ``knn.shards`` :class:`IndexShard` actors that
   each read their share of the staged files. With ``--reference``, the shards load the saved
   index of that run instead.
2. :func:`knn_batch` (Ray Data tasks over the staged rows): each block of normalised embeddings is
   sent to every shard (one object-store copy), the per-shard lists are merged exactly
   (:func:`ood_ray.index.topk.merge_topk`), reference rows drop themselves (leave-one-out), and
   the block gains ``score_knn_<model>``, ``score_knn_mean_<model>`` and the lists that
   :class:`KNNDatasink` writes as ``neighbors`` and embedding duplicate pairs.

Distances in ``neighbors``: ``distance`` is the Euclidean distance of the L2-normalised vectors,
``sqrt(2 - 2 cos)`` (KNN-OOD's), beside ``cosine_similarity``; never FAISS's squared distance.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from ood_ray.config import KNNConfig
from ood_ray.detectors.knn import kth_distance, l2_normalize, mean_cosine_distance
from ood_ray.embed.actor import EMBEDDING_PREFIX
from ood_ray.finalize import embedding_matrix
from ood_ray.index.planner import plan_index, train_template
from ood_ray.index.shards import IndexShard
from ood_ray.index.topk import drop_self, merge_topk
from ood_ray.io import storage
from ood_ray.io.rundir import RunDirectory

log = logging.getLogger(__name__)

NEIGHBOR_ID_PREFIX = "_nbr_id_"
NEIGHBOR_SIM_PREFIX = "_nbr_sim_"
DUPLICATE_ID_PREFIX = "_dup_id_"
DUPLICATE_SIM_PREFIX = "_dup_sim_"
_LIST_PREFIXES = (NEIGHBOR_ID_PREFIX, NEIGHBOR_SIM_PREFIX, DUPLICATE_ID_PREFIX, DUPLICATE_SIM_PREFIX)

NEIGHBORS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string()), pa.field("model", pa.string()), pa.field("rank", pa.int32()),
    pa.field("neighbor_id", pa.string()), pa.field("distance", pa.float32()), pa.field("cosine_similarity", pa.float32()),
])
PAIRS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string()), pa.field("other_id", pa.string()), pa.field("model", pa.string()),
    pa.field("cosine_similarity", pa.float32()),
])


@dataclass(frozen=True)
class ModelShards:
    alias: str
    dim: int
    k: int
    shards: tuple


@dataclass(frozen=True)
class KNNSettings:
    models: tuple[ModelShards, ...]
    reference_split: str | None
    all_reference: bool
    neighbors_stored: int
    duplicate_neighbors: int
    duplicate_similarity: float


def knn_score_columns(aliases: list[str]) -> list[str]:
    return [f"score_{name}_{alias}" for alias in aliases for name in ("knn", "knn_mean")]


def _ids_to_strings(ids: np.ndarray) -> np.ndarray:
    return ids.astype("U32")


def _lists(values: list[Any], n: int, rows: np.ndarray, value_type: pa.DataType) -> pa.Array:
    out: list[Any] = [None] * n
    for row, value in zip(rows.tolist(), values):
        out[row] = value
    return pa.array(out, type=pa.list_(value_type))


def knn_batch(batch: pa.Table, settings: KNNSettings) -> pa.Table:
    """Scores, neighbours and near-duplicate candidates for one block (see module docstring)."""
    import ray

    n = batch.num_rows
    image_ids = np.asarray(batch.column("image_id").to_pylist(), dtype="S32")
    splits = batch.column("split").to_pylist()
    for model in settings.models:
        rows, X = embedding_matrix(batch.column(f"{EMBEDDING_PREFIX}{model.alias}"))
        knn = np.zeros(n, np.float32)
        knn_mean = np.zeros(n, np.float32)
        missing = np.ones(n, bool)
        neighbor_ids: list[Any] = []
        neighbor_sims: list[Any] = []
        duplicate_ids: list[Any] = []
        duplicate_sims: list[Any] = []
        if len(rows):
            queries = ray.put(l2_normalize(X))
            k_dup = settings.duplicate_neighbors + 1 if settings.duplicate_neighbors else 0
            answers = ray.get([shard.search.remote(model.alias, queries, model.k + 1, k_dup) for shard in model.shards])
            sims, ids = merge_topk([a[0] for a in answers], model.k + 1)
            own = image_ids[rows]
            is_reference = np.ones(len(rows), bool) if settings.all_reference else np.asarray(
                [settings.reference_split is not None and splits[r] == settings.reference_split for r in rows.tolist()])
            kept_sims, kept_ids = sims[:, : model.k].copy(), ids[:, : model.k].copy()
            if is_reference.any():
                kept_sims[is_reference], kept_ids[is_reference] = drop_self(sims[is_reference], ids[is_reference], own[is_reference], model.k)
            knn[rows] = kth_distance(kept_sims, model.k)
            knn_mean[rows] = mean_cosine_distance(kept_sims, model.k)
            missing[rows] = False
            stored = settings.neighbors_stored
            neighbor_ids = _ids_to_strings(kept_ids[:, :stored]).tolist()
            neighbor_sims = kept_sims[:, :stored].tolist()
            if k_dup:
                all_sims, all_ids = merge_topk([a[1] for a in answers], k_dup)
                for i in range(len(rows)):
                    keep = (all_ids[i] != own[i]) & (all_ids[i] != b"") & (all_sims[i] >= settings.duplicate_similarity)
                    duplicate_ids.append(_ids_to_strings(all_ids[i][keep]).tolist())
                    duplicate_sims.append(all_sims[i][keep].tolist())
        batch = batch.append_column(pa.field(f"score_knn_{model.alias}", pa.float32()), pa.array(knn, mask=missing))
        batch = batch.append_column(pa.field(f"score_knn_mean_{model.alias}", pa.float32()), pa.array(knn_mean, mask=missing))
        batch = batch.append_column(f"{NEIGHBOR_ID_PREFIX}{model.alias}", _lists(neighbor_ids, n, rows, pa.string()))
        batch = batch.append_column(f"{NEIGHBOR_SIM_PREFIX}{model.alias}", _lists(neighbor_sims, n, rows, pa.float32()))
        batch = batch.append_column(f"{DUPLICATE_ID_PREFIX}{model.alias}", _lists(duplicate_ids, n, rows, pa.string()))
        batch = batch.append_column(f"{DUPLICATE_SIM_PREFIX}{model.alias}", _lists(duplicate_sims, n, rows, pa.float32()))
    return batch


def query_staged_files(batch: pa.Table, settings: KNNSettings, rows: int) -> pa.Table:
    """Read the staged files named in ``batch`` and run :func:`knn_batch` on chunks of ``rows``."""
    parts = []
    for uri in batch.column("uri").to_pylist():
        fs, path = storage.resolve(uri)
        table = pq.read_table(path, filesystem=fs)
        parts += [knn_batch(table.slice(start, rows), settings) for start in range(0, table.num_rows, rows)]
    return pa.concat_tables(parts)


def _explode(block: pa.Table, alias: str, id_prefix: str, sim_prefix: str) -> tuple[list, list, list, list]:
    ids_column = block.column(f"{id_prefix}{alias}").to_pylist()
    sims_column = block.column(f"{sim_prefix}{alias}").to_pylist()
    image_ids = block.column("image_id").to_pylist()
    out_image, out_rank, out_other, out_sim = [], [], [], []
    for image_id, ids, sims in zip(image_ids, ids_column, sims_column):
        for rank, (other, sim) in enumerate(zip(ids or [], sims or []), start=1):
            if other:
                out_image.append(image_id)
                out_rank.append(rank)
                out_other.append(other)
                out_sim.append(sim)
    return out_image, out_rank, out_other, out_sim


def split_knn_block(block: pa.Table, aliases: list[str]) -> tuple[pa.Table, pa.Table, pa.Table]:
    """``(staged images, neighbors, duplicate pairs)`` of one kNN output block."""
    neighbors, pairs = [], []
    for alias in aliases:
        image, rank, other, sim = _explode(block, alias, NEIGHBOR_ID_PREFIX, NEIGHBOR_SIM_PREFIX)
        sims = np.clip(np.asarray(sim, dtype=np.float64), -1.0, 1.0)
        neighbors.append(pa.Table.from_pydict({
            "image_id": image, "model": [alias] * len(image), "rank": pa.array(rank, pa.int32()), "neighbor_id": other,
            "distance": pa.array(np.sqrt(np.maximum(2 - 2 * sims, 0)), pa.float32()),
            "cosine_similarity": pa.array(sims, pa.float32()),
        }, schema=NEIGHBORS_SCHEMA))
        image, _, other, sim = _explode(block, alias, DUPLICATE_ID_PREFIX, DUPLICATE_SIM_PREFIX)
        pairs.append(pa.Table.from_pydict({"image_id": image, "other_id": other, "model": [alias] * len(image),
                                           "cosine_similarity": pa.array(sim, pa.float32())}, schema=PAIRS_SCHEMA))
    images = block.drop_columns([c for c in block.column_names if c.startswith(_LIST_PREFIXES)])
    return images, pa.concat_tables(neighbors), pa.concat_tables(pairs)


class KNNDatasink(Datasink):
    """Writes the kNN pass: staged ``images`` (with scores), ``neighbors``, staged duplicate pairs."""

    def __init__(self, out: str, run_id: str, aliases: list[str]) -> None:
        self.out, self.run_id, self.aliases = out, run_id, aliases
        self.files: dict[str, list[tuple[str, int]]] = {"images": [], "neighbors": [], "pairs": []}

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, list[tuple[str, int]]]:
        run_dir = RunDirectory(self.out, self.run_id)
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        written: dict[str, list[tuple[str, int]]] = {"images": [], "neighbors": [], "pairs": []}
        if not tables:
            return written
        images, neighbors, pairs = split_knn_block(pa.concat_tables(tables), self.aliases)
        part = f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
        written["images"].append((run_dir.write_staged_part("images_knn", part, images), images.num_rows))
        if neighbors.num_rows:
            written["neighbors"].append((run_dir.write_part("neighbors", part, neighbors), neighbors.num_rows))
        if pairs.num_rows:
            written["pairs"].append((run_dir.write_staged_part("pairs", part, pairs), pairs.num_rows))
        return written

    def on_write_complete(self, write_result: Any) -> None:
        for written in write_result.write_returns:
            for table, entries in written.items():
                self.files[table].extend(entries)


def start_shards(count: int, config: KNNConfig) -> list:
    """``count`` shard actors (one set for every model), after checking they leave a query CPU."""
    import ray

    from ood_ray.config import ConfigError

    cpus = ray.cluster_resources().get("CPU", 0.0)
    needed = count * config.num_cpus_per_shard + config.query_num_cpus
    if needed > cpus:
        raise ConfigError(f"knn.shards={count} x knn.num_cpus_per_shard={config.num_cpus_per_shard} + "
                          f"knn.query_num_cpus={config.query_num_cpus} needs {needed} CPUs; the cluster has {cpus}")
    actor = ray.remote(IndexShard).options(num_cpus=config.num_cpus_per_shard)
    return [actor.remote(config.nprobe) for _ in range(count)]


def build_shards(con: Any, infos: list, staged: list[str], reference_where: str, reference_split: str | None,
                 all_reference: bool, config: KNNConfig, shards: list) -> tuple[list[ModelShards], dict[str, Any]]:
    """Plan (and train) each model's index and fill the shard actors from the staged files."""
    import ray

    models, report = [], {}
    for info in infos:
        column = f"{EMBEDDING_PREFIX}{info.alias}"
        n_reference = con.execute(f'SELECT count(*) FROM images WHERE {reference_where} AND "{column}" IS NOT NULL').fetchall()[0][0]
        if n_reference < 2:
            log.info("knn %s: %d reference vectors -- skipped", info.alias, n_reference)
            report[info.alias] = {"skipped": f"{n_reference} reference vectors"}
            continue
        plan = plan_index(n_reference, info.embedding_dim, config.index, config.memory_budget_gb,
                          config.exact_max_vectors, config.nlist)
        log.info("knn %s: %d reference vectors of dimension %d -> %s (%s; ~%.1f MiB in %d shards)", info.alias,
                 n_reference, info.embedding_dim, plan.factory, plan.reason, plan.memory_bytes / 2**20, len(shards))
        template = None
        if plan.kind != "flat":
            sample = con.sql(f'SELECT "{column}" AS v FROM images WHERE {reference_where} AND "{column}" IS NOT NULL '
                             f"USING SAMPLE {int(config.train_sample)} ROWS (reservoir, 0)").to_arrow_table()
            vectors = sample.column("v").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(sample.num_rows, -1)
            template = train_template(plan, l2_normalize(vectors), config.nprobe)
        ray.get([shard.add_model.remote(info.alias, info.embedding_dim, template) for shard in shards])
        sizes = ray.get([shard.load_rows.remote(info.alias, staged[i::len(shards)], column, reference_split, all_reference)
                         for i, shard in enumerate(shards)])
        k = min(config.k, n_reference - 1)
        if k < config.k:
            log.warning("knn %s: k=%d is more than the %d other reference vectors; using k=%d", info.alias, config.k, n_reference - 1, k)
        models.append(ModelShards(info.alias, info.embedding_dim, k, tuple(shards)))
        report[info.alias] = {"plan": plan.to_dict(), "k": k, "n_reference": int(n_reference), "shard_sizes": sizes}
    return models, report


def saved_shard_count(infos: list, reference_run: dict) -> int:
    """How many shards the saved index of ``reference_run`` was written from."""
    return max([len(reference_run.get("knn", {}).get(info.alias, {}).get("files", [])) for info in infos] + [0])


def load_saved_shards(infos: list, reference_run: dict, reference_out: str, staged: list[str],
                      shards: list) -> tuple[list[ModelShards], dict]:
    """Fill ``shards`` with a committed run's saved reference index (and this run's rows as ``others``)."""
    import ray

    models, report = [], {}
    saved = reference_run.get("knn", {})
    for info in infos:
        entry = saved.get(info.alias)
        if not entry or "files" not in entry:
            continue
        ray.get([shard.add_model.remote(info.alias, info.embedding_dim) for shard in shards])
        ray.get([shard.load_saved.remote(info.alias, info.embedding_dim, storage.join(reference_out, f["index"]),
                                         storage.join(reference_out, f["ids"])) for shard, f in zip(shards, entry["files"])])
        column = f"{EMBEDDING_PREFIX}{info.alias}"
        sizes = ray.get([shard.load_rows.remote(info.alias, staged[i::len(shards)], column, None, False)
                         for i, shard in enumerate(shards)])
        models.append(ModelShards(info.alias, info.embedding_dim, entry["k"], tuple(shards)))
        report[info.alias] = {**{k: v for k, v in entry.items() if k != "files"}, "shard_sizes": sizes,
                              "reference_run": reference_run["run_id"]}
    return models, report


def save_shards(models: list[ModelShards], run_dir: RunDirectory, report: dict) -> list[str]:
    """Write each shard's reference index and ids into ``OUT/index/<model>/``; returns the URIs."""
    import ray

    uris = []
    for model in models:
        files = []
        for i, shard in enumerate(model.shards):
            index_name = f"index/{model.alias}/shard-{i:04d}-{run_dir.run_id}.faiss"
            ids_name = f"index/{model.alias}/shard-{i:04d}-{run_dir.run_id}.ids.parquet"
            ray.get(shard.save.remote(model.alias, storage.join(run_dir.out, index_name), storage.join(run_dir.out, ids_name)))
            files.append({"index": index_name, "ids": ids_name})
            uris += [storage.join(run_dir.out, index_name), storage.join(run_dir.out, ids_name)]
        report[model.alias]["files"] = files
    return uris
