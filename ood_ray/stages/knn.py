"""Stage ``knn``: shard actors over the reference embeddings, then a distributed query pass.

1. Driver half: counts the reference vectors of each model, plans the index
   (:mod:`ood_ray.index.planner`, logged with its memory estimate), trains an IVF template on a
   sample when the plan asks for one, and starts ``knn.shards`` :class:`IndexShard` actors, each
   given the *plan* of its share (staged files, template; or with ``--reference`` the saved index
   of that run) and building itself from storage in its constructor. Ray restarts a shard whose
   process or node dies (``max_restarts=-1``) and the restarted actor rebuilds the same shard;
   queries to it are retried (``max_task_retries=-1``).
2. Batch half, :func:`knn_batch` (Ray Data tasks, one per staged file): each block of normalised
   embeddings is sent to every shard (one object-store copy), the per-shard lists are merged exactly
   (:func:`ood_ray.index.topk.merge_topk`), reference rows drop themselves (leave-one-out), and the
   block gains ``score_knn_<model>``, ``score_knn_mean_<model>``, for a labelled dataset the
   neighbour-vote label issue ``score_label_issue_knn_<model>`` / ``is_label_issue_knn_<model>``
   (the shards return their rows' labels with the ids; :mod:`ood_ray.label_issues`), and the lists
   that :class:`KNNSink` writes as ``neighbors`` and embedding duplicate pairs.

Distances in ``neighbors``: ``distance`` is the Euclidean distance of the L2-normalised vectors,
``sqrt(2 - 2 cos)`` (KNN-OOD's), beside ``cosine_similarity``; never FAISS's squared distance.
The state: per model ``k``, the plan, the reference size and the saved shard files (artifacts
that a ``--reference`` run's kNN stage loads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ood_ray.columns import (
    DUPLICATE_ID_PREFIX,
    DUPLICATE_SIM_PREFIX,
    NEIGHBOR_ID_PREFIX,
    NEIGHBOR_SIM_PREFIX,
    embedding_column,
    embedding_matrix,
    score_column,
)
from ood_ray.config import ConfigError
from ood_ray.detectors.knn import kth_distance, l2_normalize, mean_cosine_distance
from ood_ray.index.planner import plan_index, train_template
from ood_ray.index.shards import IndexShard
from ood_ray.index.topk import drop_self, merge_topk
from ood_ray.io import storage
from ood_ray.label_issues import flag_of, neighbor_disagreement
from ood_ray.label_issues import knn_score_column as knn_label_column
from ood_ray.run.sink import PartSink
from ood_ray.sampling import hash_order
from ood_ray.stages.base import Stage, StageResult
from ood_ray.tables import DUPLICATE_PAIRS_SCHEMA, NEIGHBORS_SCHEMA

log = logging.getLogger(__name__)

_LIST_PREFIXES = (NEIGHBOR_ID_PREFIX, NEIGHBOR_SIM_PREFIX, DUPLICATE_ID_PREFIX, DUPLICATE_SIM_PREFIX)


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
    retry: storage.RetryPolicy = storage.DEFAULT_RETRY
    #: neighbours whose labels vote for ``score_label_issue_knn_<model>`` (0: no label scores) and
    #: the share of disagreeing ones above which ``is_label_issue_knn_<model>`` is set
    label_k: int = 0
    label_threshold: float = 0.5
    #: the reference rows' labels (UTF-8): a row with another label (an OOD split's own classes)
    #: gets no neighbour vote, its label being no class of the reference
    reference_labels: frozenset = frozenset()


def knn_score_columns(aliases: list[str]) -> list[str]:
    return [score_column(name, alias) for alias in aliases for name in ("knn", "knn_mean")]


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
    labels = settings.label_k > 0
    own_labels = np.asarray([(v or "").encode() if (v or "").encode() in settings.reference_labels else b""
                             for v in batch.column("label").to_pylist()], dtype="S") if labels else None
    for model in settings.models:
        rows, X = embedding_matrix(batch.column(embedding_column(model.alias)))
        knn = np.zeros(n, np.float32)
        knn_mean = np.zeros(n, np.float32)
        missing = np.ones(n, bool)
        neighbor_ids: list[Any] = []
        neighbor_sims: list[Any] = []
        duplicate_ids: list[Any] = []
        duplicate_sims: list[Any] = []
        disagreement = np.full(n, np.nan)
        if len(rows):
            queries = ray.put(l2_normalize(X))
            k_dup = settings.duplicate_neighbors + 1 if settings.duplicate_neighbors else 0
            answers = ray.get([shard.search.remote(model.alias, queries, model.k + 1, k_dup, labels=labels)
                               for shard in model.shards])
            merged = merge_topk([a[0] for a in answers], model.k + 1)
            sims, ids = merged[0], merged[1]
            own = image_ids[rows]
            is_reference = np.ones(len(rows), bool) if settings.all_reference else np.asarray(
                [settings.reference_split is not None and splits[r] == settings.reference_split for r in rows.tolist()])
            kept = [a[:, : model.k].copy() for a in merged]
            if is_reference.any():
                dropped = drop_self(sims[is_reference], ids[is_reference], own[is_reference], model.k,
                                    *(a[is_reference] for a in merged[2:]))
                for column, values in zip(kept, dropped):
                    column[is_reference] = values
            kept_sims, kept_ids = kept[0], kept[1]
            if labels:
                disagreement[rows] = neighbor_disagreement(own_labels[rows], kept[2][:, : settings.label_k])
            knn[rows] = kth_distance(kept_sims, model.k)
            knn_mean[rows] = mean_cosine_distance(kept_sims, model.k)
            missing[rows] = False
            stored = settings.neighbors_stored
            neighbor_ids = kept_ids[:, :stored].astype("U32").tolist()
            neighbor_sims = kept_sims[:, :stored].tolist()
            if k_dup:
                all_sims, all_ids = merge_topk([a[1] for a in answers], k_dup)
                for i in range(len(rows)):
                    keep = (all_ids[i] != own[i]) & (all_ids[i] != b"") & (all_sims[i] >= settings.duplicate_similarity)
                    duplicate_ids.append(all_ids[i][keep].astype("U32").tolist())
                    duplicate_sims.append(all_sims[i][keep].tolist())
        batch = batch.append_column(pa.field(score_column("knn", model.alias), pa.float32()), pa.array(knn, mask=missing))
        batch = batch.append_column(pa.field(score_column("knn_mean", model.alias), pa.float32()), pa.array(knn_mean, mask=missing))
        if labels:
            missing_label = np.isnan(disagreement)
            batch = batch.append_column(pa.field(knn_label_column(model.alias), pa.float32()),
                                        pa.array(np.nan_to_num(disagreement).astype(np.float32), mask=missing_label))
            batch = batch.append_column(pa.field(flag_of(knn_label_column(model.alias)), pa.bool_()),
                                        pa.array(np.nan_to_num(disagreement) > settings.label_threshold, mask=missing_label))
        batch = batch.append_column(f"{NEIGHBOR_ID_PREFIX}{model.alias}", _lists(neighbor_ids, n, rows, pa.string()))
        batch = batch.append_column(f"{NEIGHBOR_SIM_PREFIX}{model.alias}", _lists(neighbor_sims, n, rows, pa.float32()))
        batch = batch.append_column(f"{DUPLICATE_ID_PREFIX}{model.alias}", _lists(duplicate_ids, n, rows, pa.string()))
        batch = batch.append_column(f"{DUPLICATE_SIM_PREFIX}{model.alias}", _lists(duplicate_sims, n, rows, pa.float32()))
    return batch


def query_staged_files(batch: pa.Table, settings: KNNSettings, rows: int) -> pa.Table:
    """Read the staged files named in ``batch`` and run :func:`knn_batch` on chunks of ``rows``."""
    parts = []
    for uri in batch.column("uri").to_pylist():
        table = storage.read_parquet(uri, retry=settings.retry)
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
        sims = np.asarray(sim, dtype=np.float64)
        pairs.append(pa.Table.from_pydict({"image_id": image, "other_id": other, "model": [alias] * len(image),
                                           "cosine_similarity": pa.array(sim, pa.float32()),
                                           "method": ["embedding"] * len(image),
                                           "distance": pa.array(1.0 - sims, pa.float64()),
                                           "transform": pa.nulls(len(image), pa.string())}, schema=DUPLICATE_PAIRS_SCHEMA))
    images = block.drop_columns([c for c in block.column_names if c.startswith(_LIST_PREFIXES)])
    return images, pa.concat_tables(neighbors), pa.concat_tables(pairs)


class KNNSink(PartSink):
    """Staged ``images`` (with the kNN scores), ``neighbors``, staged embedding duplicate pairs."""

    TABLES = ("images_knn", "neighbors", "pairs")

    def __init__(self, *args: Any, aliases: list[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, staged=("images_knn", "pairs"), **kwargs)
        self.aliases = list(aliases)

    def split(self, block: pa.Table) -> dict[str, pa.Table]:
        return dict(zip(self.TABLES, split_knn_block(block, self.aliases)))


def start_shards(plans: list[list[dict[str, Any]]], config: Any, helper_resources: dict[str, float]) -> list:
    """One shard actor per entry of ``plans`` (its models' build plans), after checking that the
    shards leave a CPU for the query tasks; waits until every shard is built."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    needed = len(plans) * config.num_cpus_per_shard + config.query_num_cpus
    if needed > cpus:
        raise ConfigError(f"knn.shards={len(plans)} x knn.num_cpus_per_shard={config.num_cpus_per_shard} + "
                          f"knn.query_num_cpus={config.query_num_cpus} needs {needed} CPUs; the cluster has {cpus}")
    from ood_ray.run.ray_runtime import helper_options

    options: dict[str, Any] = {"num_cpus": config.num_cpus_per_shard, "max_restarts": -1, "max_task_retries": -1,
                               **helper_options(helper_resources)}
    actor = ray.remote(IndexShard).options(**options)
    shards = [actor.remote(config.nprobe, plan) for plan in plans]
    ray.get([shard.ready.remote() for shard in shards])
    return shards


class KNNStage(Stage):
    name = "knn"
    reads = ("io", "knn", "ray", "label_issues")
    writes = ("neighbors",)
    report_key = "knn"

    def enabled(self, ctx: Any) -> bool:
        return ctx.config.knn.enabled and bool(ctx.infos)

    def _plans(self, ctx: Any, staged: list[str]) -> tuple[list[list[dict]], dict[str, Any], list[ModelShards]]:
        """Per shard, the build plans of every model (this run's reference, or the saved index)."""
        knn = ctx.section(self).knn
        count = knn.shards
        per_shard: list[list[dict]] = []
        report_: dict[str, Any] = {}
        models: list[tuple[str, int, int]] = []
        if ctx.reference is not None:
            saved = ctx.reference.stage("knn").get("models", {})
            count = max([len(entry.get("files", [])) for entry in saved.values()] + [0])
            per_shard = [[] for _ in range(count)]
            for info in ctx.infos:
                entry = saved.get(info.alias)
                if not entry or "files" not in entry:
                    continue
                column = embedding_column(info.alias)
                for i, files in enumerate(entry["files"]):
                    per_shard[i].append({"alias": info.alias, "dim": info.embedding_dim, "column": column,
                                         "index_uri": ctx.reference.artifact(files["index"]),
                                         "ids_uri": ctx.reference.artifact(files["ids"]), "files": staged[i::count]})
                models.append((info.alias, info.embedding_dim, entry["k"]))
                report_[info.alias] = {k: v for k, v in entry.items() if k != "files"} | {"reference_run": ctx.reference.run_id}
            return per_shard, report_, [ModelShards(a, d, k, ()) for a, d, k in models]
        per_shard = [[] for _ in range(count)]
        con = ctx.con()
        where = ctx.reference_where()
        all_reference = ctx.reference_split is None
        for info in ctx.infos:
            column = embedding_column(info.alias)
            n_reference = con.execute(f'SELECT count(*) FROM images WHERE {where} AND "{column}" IS NOT NULL').fetchall()[0][0]
            if n_reference < 2:
                log.info("knn %s: %d reference vectors -- skipped", info.alias, n_reference)
                report_[info.alias] = {"skipped": f"{n_reference} reference vectors"}
                continue
            plan = plan_index(n_reference, info.embedding_dim, knn.index, knn.memory_budget_gb, knn.exact_max_vectors, knn.nlist)
            log.info("knn %s: %d reference vectors of dimension %d -> %s (%s; ~%.1f MiB in %d shards)", info.alias,
                     n_reference, info.embedding_dim, plan.factory, plan.reason, plan.memory_bytes / 2**20, count)
            template = None
            if plan.kind != "flat":
                sample = ctx.sampler().select([column], f'{where} AND "{column}" IS NOT NULL', hash_order("knn-train"),
                                              knn.train_sample)
                template = train_template(plan, l2_normalize(embedding_matrix(sample.column(column))[1]), knn.nprobe)
            for i in range(count):
                per_shard[i].append({"alias": info.alias, "dim": info.embedding_dim, "template": template, "column": column,
                                     "files": staged[i::count], "reference_split": ctx.reference_split,
                                     "all_reference": all_reference})
            k = min(knn.k, n_reference - 1)
            if k < knn.k:
                log.warning("knn %s: k=%d is more than the %d other reference vectors; using k=%d", info.alias, knn.k,
                            n_reference - 1, k)
            models.append((info.alias, info.embedding_dim, k))
            report_[info.alias] = {"plan": plan.to_dict(), "k": k, "n_reference": int(n_reference)}
        return per_shard, report_, [ModelShards(a, d, k, ()) for a, d, k in models]

    def run(self, ctx: Any) -> StageResult:
        import ray

        from ood_ray.run.ray_runtime import configure_ray_data

        cfg = ctx.section(self)
        knn = cfg.knn
        staged = ctx.images_uris()
        plans, report_, models = self._plans(ctx, staged)
        reference_labels = frozenset(r[0].encode() for r in ctx.con().execute(
            f"SELECT DISTINCT label FROM images WHERE {ctx.reference_where()} AND label IS NOT NULL").fetchall()
        ) if cfg.label_issues.enabled and ctx.reference is None else frozenset()
        if ctx.reference is not None and cfg.label_issues.enabled:  # the labels the saved index holds
            reference_labels = frozenset(v.encode() for v in ctx.reference.stage("knn").get("reference_labels", []))
        labelled = bool(reference_labels)
        if not models or not plans:
            return StageResult(report=report_, state={"models": report_})
        shards = start_shards(plans, knn, cfg.ray.helper_resources)
        result = StageResult(report=report_)
        try:
            sizes = ray.get([shard.ready.remote() for shard in shards])
            for alias, entry in report_.items():
                if "skipped" not in entry:
                    entry["shard_sizes"] = [size.get(alias, {}) for size in sizes]
            models = [ModelShards(m.alias, m.dim, m.k, tuple(shards)) for m in models]
            settings = KNNSettings(tuple(models), ctx.reference_split if ctx.reference is None else None,
                                   ctx.reference is None and ctx.reference_split is None, knn.neighbors_stored,
                                   knn.duplicate_neighbors, knn.duplicate_similarity, ctx.retry,
                                   label_k=cfg.label_issues.k if labelled else 0,
                                   label_threshold=cfg.label_issues.knn_threshold, reference_labels=reference_labels)
            configure_ray_data(ctx.config)
            # One task per staged file, reading it itself, and a fraction of a CPU each: the shard
            # actors hold the rest while they serve.
            dataset = ray.data.from_items([{"uri": uri} for uri in staged]).map_batches(
                query_staged_files, batch_size=1, batch_format="pyarrow", num_cpus=knn.query_num_cpus,
                fn_kwargs={"settings": settings, "rows": knn.query_rows})
            sink = KNNSink(ctx.layout.out, ctx.layout.run_id, aliases=[m.alias for m in models], retry=ctx.retry,
                           compacted=cfg.io.compacts)
            with sink.progress("knn", "images_knn", ctx.inputs.num_rows, cfg.ray.progress_interval_s):
                sink.write_dataset(dataset, num_cpus=knn.query_num_cpus)
            if ctx.reference is None:
                result.artifacts += save_shards(models, ctx.layout, report_)
        finally:
            for shard in shards:
                ray.kill(shard)
        if sink.files.get("neighbors"):
            result.files["neighbors"] = sink.files["neighbors"]
        result.staged = {"images": [uri for uri, _ in sink.files["images_knn"]],
                         "pairs": [uri for uri, _ in sink.files.get("pairs", [])]}
        result.state = {"models": report_, "label_k": settings.label_k,
                        "reference_labels": sorted(v.decode() for v in reference_labels)}
        return result


def save_shards(models: list[ModelShards], layout: Any, report_: dict) -> list[str]:
    """Write each shard's reference index and ids into the run's ``index/<model>/``; returns the
    URIs (artifacts) and records their paths relative to ``OUT`` in ``report_``."""
    import ray

    uris = []
    for model in models:
        files = []
        for i, shard in enumerate(model.shards):
            index_name = f"index/{model.alias}/shard-{i:04d}-{layout.run_id}.faiss"
            ids_name = f"index/{model.alias}/shard-{i:04d}-{layout.run_id}.ids.parquet"
            ray.get(shard.save.remote(model.alias, layout.artifact_uri(index_name), layout.artifact_uri(ids_name)))
            files.append({"index": index_name, "ids": ids_name})
            uris += [layout.artifact_uri(index_name), layout.artifact_uri(ids_name)]
        report_[model.alias]["files"] = files
    return uris
