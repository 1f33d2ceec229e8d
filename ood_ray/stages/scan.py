"""Stage ``scan``: the manifest through Ray Data -- fetch, decode, statistics, hashes (and, with
models, the embedding operator of :mod:`ood_ray.stages.embed`) -- into ``images``, ``channels`` and
``predictions`` part files.

The manifest parts (:mod:`ood_ray.io.inputs`) hold blocks of ``io.rows_per_block`` rows, one
Parquet row group each; the dataset is the *numbers* of the blocks to scan (``ray.data.range``: the
driver never holds a manifest row), and a ``map_batches`` task per block reads its row group and
runs :func:`ood_ray.scan.scan_batch` (bytes fetched *in the worker*, each object decoded once inside
its own error handling). :class:`ScanSink` writes one part per table per write task and records it
in the run's ledger, with the number of rows of each block it holds, as soon as its files are
complete. A resumed run keeps every recorded part, skips the blocks whose rows are all recorded and
rescans the others but for their recorded rows (a part written but not recorded is removed and its
rows scanned again), so a kill costs at most the blocks in flight; the driver keeps a count per
block, not an id per row.

The stage's state: status counts, worker seconds, and the reference selection -- the split
``ood.reference_split`` when it has ``ok`` rows, else every ``ok`` row (``reference_split: null``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.columns import (
    CHANNEL_LIST_PREFIX,
    EMBED_IDLE_SECONDS,
    EMBED_SECONDS,
    FETCH_SECONDS,
    INPUT_ERROR,
    LOGITS_PREFIX,
    PROBABILITIES_PREFIX,
    SCAN_SECONDS,
    TOPK_CLASS_PREFIX,
    TOPK_PROB_PREFIX,
)
from ood_ray.io import storage
from ood_ray.io.inputs import SEQUENCE
from ood_ray.io.memory import default_decode_budget
from ood_ray.run.sink import PartSink
from ood_ray.stages.base import Stage, StageResult
from ood_ray.stats.image import CHANNEL_STAT_NAMES
from ood_ray.tables import CHANNELS_SCHEMA, PREDICTIONS_SCHEMA

log = logging.getLogger(__name__)

#: Internal column: the manifest block a scanned row came from (counted per ledger record, dropped).
BLOCK = "_block"
_NEVER_STORED = (CHANNEL_LIST_PREFIX, PROBABILITIES_PREFIX, LOGITS_PREFIX, TOPK_CLASS_PREFIX, TOPK_PROB_PREFIX)


def predictions_of(block: pa.Table) -> pa.Table:
    """The ``predictions`` rows (one per image and classifier) carried by an embedded block."""
    parts = []
    for name in block.column_names:
        if not name.startswith(TOPK_CLASS_PREFIX):
            continue
        alias = name[len(TOPK_CLASS_PREFIX):]
        rows = block.filter(pc.is_valid(block.column(name)))
        full, logits = f"{PROBABILITIES_PREFIX}{alias}", f"{LOGITS_PREFIX}{alias}"
        empty = pa.nulls(rows.num_rows, pa.list_(pa.float32()))
        parts.append(pa.Table.from_pydict({
            "image_id": rows.column("image_id"),
            "model": pa.array([alias] * rows.num_rows, pa.string()),
            "top_classes": rows.column(name),
            "top_probabilities": rows.column(f"{TOPK_PROB_PREFIX}{alias}"),
            "probabilities": rows.column(full) if full in rows.column_names else empty,
            "logits": rows.column(logits) if logits in rows.column_names else empty,
        }, schema=PREDICTIONS_SCHEMA))
    return pa.concat_tables(parts) if parts else PREDICTIONS_SCHEMA.empty_table()


def split_scan_block(block: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """``(images, channels, predictions)`` tables from one scan (or embedded) output block.

    ``images`` keeps the ``_emb_`` and ``_ae_pixels`` columns (later stages read them from the
    staged parts); the lists, the listing's size and the timing columns are dropped.
    """
    predictions = predictions_of(block)
    drop = [name for name in block.column_names if name.startswith(_NEVER_STORED)
            or name in (INPUT_ERROR, FETCH_SECONDS, SCAN_SECONDS, EMBED_SECONDS, EMBED_IDLE_SECONDS, BLOCK)]
    images = block.drop_columns(drop)
    if "listed_size" in images.column_names:
        # A missing object has no fetched size; the listing's size (when listed) stands in.
        sizes = pc.coalesce(images.column("file_size"), images.column("listed_size"))
        images = images.set_column(images.column_names.index("file_size"), "file_size", sizes)
        images = images.drop_columns(["listed_size"])

    bands = block.column(f"{CHANNEL_LIST_PREFIX}band").combine_chunks()
    parents = pc.list_parent_indices(bands)
    image_ids = pc.take(block.column("image_id"), parents)
    offsets = bands.offsets.to_numpy()
    starts = offsets[parents.to_numpy()] if len(parents) else offsets[:0]
    channel_index = (pa.array(range(len(parents)), pa.int64()).to_numpy() - starts).astype("int32")
    columns = {"image_id": image_ids, "channel": pa.array(channel_index, pa.int32()), "band": pc.list_flatten(bands)}
    for name in CHANNEL_STAT_NAMES:
        columns[name] = pc.list_flatten(block.column(f"{CHANNEL_LIST_PREFIX}{name}").combine_chunks())
    channels = pa.Table.from_pydict(columns, schema=CHANNELS_SCHEMA)
    return images, channels, predictions


class ScanSink(PartSink):
    """``images`` (staged while later stages add columns), ``channels``, ``predictions``; per task:
    status counts, worker seconds and the number of ``ok`` rows in the reference split."""

    TABLES = ("images", "channels", "predictions")

    def __init__(self, *args: Any, reference_split: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference_split = reference_split

    def split(self, block: pa.Table) -> dict[str, pa.Table]:
        return dict(zip(self.TABLES, split_scan_block(block)))

    def summary(self, block: pa.Table) -> dict[str, dict[str, float]]:
        statuses = {str(s.as_py()): int(c.as_py()) for s, c in zip(*pc.value_counts(block.column("status")).flatten())}
        seconds = {"fetch": float(pc.sum(block.column(FETCH_SECONDS)).as_py() or 0.0),
                   "decode_and_stats": float(pc.sum(block.column(SCAN_SECONDS)).as_py() or 0.0)}
        for name, column in (("embed", EMBED_SECONDS), ("embed_idle", EMBED_IDLE_SECONDS)):
            if column in block.column_names:
                seconds[name] = float(pc.sum(block.column(column)).as_py() or 0.0)
        ok = pc.equal(block.column("status"), "ok")
        in_split = pc.equal(block.column("split"), self.reference_split) if self.reference_split is not None else ok
        reference = int(pc.sum(pc.fill_null(pc.and_(ok, in_split), False)).as_py() or 0)
        blocks = {str(b.as_py()): int(c.as_py()) for b, c in zip(*pc.value_counts(block.column(BLOCK)).flatten())}
        return {"statuses": statuses, "seconds": seconds, "reference": {"rows": reference}, "blocks": blocks}


class ScanStage(Stage):
    name = "scan"
    reads = ("io", "stats", "ray", "ood", "embed", "autoencoder", "dedup", "quality")
    writes = ("images", "channels", "predictions")

    def run(self, ctx: Any) -> StageResult:
        from ood_ray.embed.preprocess import preprocessing_key
        from ood_ray.scan import ScanSettings

        cfg = ctx.section(self)
        staged = bool(ctx.infos) or cfg.autoencoder.enabled
        sink = ScanSink(ctx.layout.out, ctx.layout.run_id, staged={"images"} if staged else (),
                        ledger_dir=ctx.layout.ledger_dir if cfg.ray.ledger else None, retry=ctx.retry,
                        reference_split=cfg.ood.reference_split, compacted=cfg.io.compacts)
        plan = self._remaining(ctx, sink)
        started = time.perf_counter()
        if plan.rows:
            model_inputs = {preprocessing_key(info.data_config): info.data_config for info in ctx.infos}
            settings = ScanSettings.from_config(cfg, tuple(model_inputs.items()), ctx.layout.run_id, ctx.retry)
            with sink.progress("decode", "images", plan.rows, cfg.ray.progress_interval_s):
                if ctx.local:
                    from ood_ray.io.memory import node_cpus
                    from ood_ray.run.local import scan_locally

                    scan_locally(plan, settings, sink, int(max(1, node_cpus() // cfg.ray.task_num_cpus)),
                                 cfg.ray.task_num_cpus)
                else:
                    from ood_ray.run.ray_runtime import configure_ray_data

                    configure_ray_data(ctx.config)
                    sink.write_dataset(scan_dataset(ctx, plan, settings), num_cpus=cfg.ray.task_num_cpus)
        seconds = time.perf_counter() - started
        statuses = {k: int(v) for k, v in sorted(sink.totals.get("statuses", {}).items())}
        reference_rows = int(sink.totals.get("reference", {}).get("rows", 0))
        reference_split = cfg.ood.reference_split if reference_rows else None
        if reference_split is None:
            log.info("no ok rows in reference split %r: the reference is every ok row", cfg.ood.reference_split)
        state = {
            "status_counts": statuses,
            "worker_seconds": {k: round(v, 3) for k, v in sink.totals.get("seconds", {}).items()},
            "images_per_second": round(plan.rows / seconds, 2) if plan.rows and seconds > 0 else None,
            "rows_per_block": ctx.inputs.rows_per_block, "blocks": int(len(block_sizes(ctx.inputs))),
            "embed_actor_busy_share": _busy_share(sink.totals.get("seconds", {})),
            "reference_split": reference_split,
            "reference_rows": reference_rows if reference_split else statuses.get("ok", 0),
            "max_decode_bytes": cfg.io.max_decode_bytes or default_decode_budget(cfg.ray.task_num_cpus),
        }
        files = {table: entries for table, entries in sink.files.items() if entries and table not in sink.staged}
        return StageResult(files=files, staged={"images": [uri for uri, _ in sink.files["images"]]} if staged else {},
                           state=state)

    def _remaining(self, ctx: Any, sink: ScanSink) -> ScanPlan:
        """The blocks still to scan: all of them, or on resume those whose rows are not all in a
        recorded part (with the ids of their recorded rows, which are not scanned again)."""
        inputs = ctx.inputs
        sizes = block_sizes(inputs)
        if not ctx.resumed:
            return ScanPlan(inputs.parts, inputs.rows_per_block, np.arange(len(sizes), dtype=np.int64), {},
                            int(sizes.sum()))
        records = ctx.ledger.read_parts()
        recorded_files = set()
        for record in records:
            sink.absorb(record)
            for entries in record.get("tables", {}).values():
                recorded_files.update(uri for uri, _ in entries)
        orphans = [uri for folder in ("images", "channels", "predictions", "_staging/images")
                   for uri, _ in storage.list_files(storage.join(ctx.layout.root, folder)) if uri not in recorded_files]
        if orphans:
            log.info("resume: removing %d part files that were written but not recorded", len(orphans))
            storage.delete_files(orphans)
        kept = np.zeros(len(sizes), dtype=np.int64)
        for block, rows in sink.totals.get("blocks", {}).items():
            kept[int(block)] += int(rows)
        todo = np.flatnonzero(kept < sizes).astype(np.int64)
        skip = self._recorded_ids(ctx, records, set(np.flatnonzero((kept > 0) & (kept < sizes)).tolist()))
        rows_kept = int(kept.sum())
        plan = ScanPlan(inputs.parts, inputs.rows_per_block, todo, skip, int(sizes[todo].sum() - (kept[todo]).sum()))
        ctx.resume_report.update({
            "rows_kept": rows_kept, "parts_kept": len(records), "rows_scanned_again": plan.rows,
            "blocks_skipped": int(len(sizes) - len(todo)), "blocks_partly_kept": len(skip)})
        ctx.ledger.write_resume(ctx.resume_report)
        log.info("resume: %d rows kept from %d recorded parts, %d rows in %d blocks to scan", rows_kept, len(records),
                 plan.rows, len(todo))
        return plan

    @staticmethod
    def _recorded_ids(ctx: Any, records: list[dict[str, Any]], partial: set[int]) -> dict[int, list[str]]:
        """``{block: ids of its recorded rows}`` for the blocks only partly recorded (a block can
        straddle write tasks); only the parts that hold such a block are read."""
        if not partial:
            return {}
        recorded: set[str] = set()
        for record in records:
            if partial & {int(b) for b in record.get("summary", {}).get("blocks", {})}:
                for uri, _ in record.get("tables", {}).get("images", []):
                    recorded.update(storage.read_parquet(uri, ["image_id"], ctx.retry).column("image_id").to_pylist())
        out = {}
        for block in sorted(partial):
            ids = read_block(ctx.inputs.parts, ctx.inputs.rows_per_block, block, ctx.retry).column("image_id").to_pylist()
            out[block] = [i for i in ids if i in recorded]
        return out


@dataclass
class ScanPlan:
    """What the scan tasks read: the manifest parts, the block numbers to scan and, per partly
    recorded block, the ids not to scan again; ``rows``: how many rows that makes."""

    parts: list[tuple[str, int]]
    rows_per_block: int
    blocks: np.ndarray
    skip: dict[int, list[str]]
    rows: int


def _busy_share(seconds: dict[str, float]) -> float | None:
    """The embedding actors' share of time in batches rather than waiting for the next one (from
    their first batch on; None without models): below 1, the decode tasks did not keep them fed."""
    busy, idle = seconds.get("embed"), seconds.get("embed_idle")
    if busy is None or idle is None or busy + idle <= 0:
        return None
    return round(busy / (busy + idle), 4)


def block_sizes(inputs: Any) -> np.ndarray:
    """Rows of every block of the manifest parts, in block order."""
    sizes = []
    for _, rows in inputs.parts:
        full, rest = divmod(rows, inputs.rows_per_block)
        sizes += [inputs.rows_per_block] * full + ([rest] if rest else [])
    return np.array(sizes, dtype=np.int64)


def read_block(parts: list[tuple[str, int]], rows_per_block: int, block: int,
               retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> pa.Table:
    """Block ``block`` of the manifest parts (read from the row group holding it), without the
    sequence column."""
    import pyarrow.parquet as pq

    counts = np.array([-(-rows // rows_per_block) for _, rows in parts], dtype=np.int64)
    ends = np.cumsum(counts)
    index = int(np.searchsorted(ends, block, side="right"))
    first = (block - int(ends[index - 1] if index else 0)) * rows_per_block
    fs, path = storage.resolve(parts[index][0])

    def read() -> pa.Table:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            start = 0
            for group in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if first < start + rows:
                    return parquet.read_row_group(group).slice(first - start, rows_per_block)
                start += rows
            raise IndexError(f"block {block} is beyond {parts[index][0]}")

    table = retry.call(read, parts[index][0])
    return table.drop_columns([SEQUENCE]) if SEQUENCE in table.column_names else table


def scan_blocks(batch: pa.Table, plan: Any, settings: Any) -> pa.Table:
    """The scan of the blocks numbered in ``batch`` (``id``: positions in ``plan.blocks``)."""
    import ray

    from ood_ray.scan import scan_batch

    if isinstance(plan, ray.ObjectRef):
        plan = ray.get(plan)
    out = []
    for position in batch.column("id").to_pylist():
        block = int(plan.blocks[position])
        rows = read_block(plan.parts, plan.rows_per_block, block, settings.retry)
        if block in plan.skip:
            rows = rows.filter(pc.invert(pc.is_in(rows.column("image_id"), pa.array(plan.skip[block], pa.string()))))
        rows = rows.append_column(BLOCK, pa.array(np.full(rows.num_rows, block, dtype=np.int64)))
        out.append(scan_batch(rows, settings))
    return pa.concat_tables(out) if len(out) > 1 else out[0]


def scan_dataset(ctx: Any, plan: ScanPlan, settings: Any) -> Any:
    """The scan's Ray Data pipeline before its sink: a task per block reads the block's rows and
    scans them, followed, with models, by the embedding actor pool. The range read, the scan and
    (without models) the sink's write fuse into one task per block; the scan is never fused into
    the embedding actors (their memory request differs), so decoding stays in parallel CPU tasks."""
    import ray

    from ood_ray.stages.embed import EmbedStage

    blocks = len(plan.blocks)
    dataset = ray.data.range(blocks, override_num_blocks=blocks).map_batches(
        scan_blocks, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"plan": ray.put(plan), "settings": settings},
        num_cpus=ctx.config.ray.task_num_cpus)
    return EmbedStage.operator(dataset, ctx) if ctx.infos else dataset
