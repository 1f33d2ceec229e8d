"""Stage ``scan``: the manifest through Ray Data -- fetch, decode, statistics, hashes (and, with
models, the embedding operator of :mod:`ood_ray.stages.embed`) -- into ``images``, ``channels`` and
``predictions`` part files.

The manifest is cut into blocks of ``io.rows_per_block`` rows; a ``map_batches`` task per block
runs :func:`ood_ray.scan.scan_batch` (bytes fetched *in the worker*, each object decoded once inside
its own error handling). :class:`ScanSink` writes one part per table per write task and records it
in the run's ledger as soon as its files are complete. A resumed run keeps every recorded part and
scans only the rows that no recorded part holds (a part written but not recorded is removed and its
rows scanned again), so a kill costs at most the blocks in flight.

The stage's state: status counts, worker seconds, and the reference selection -- the split
``ood.reference_split`` when it has ``ok`` rows, else every ``ok`` row (``reference_split: null``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ood_ray.columns import (
    CHANNEL_LIST_PREFIX,
    FETCH_SECONDS,
    INPUT_ERROR,
    LOGITS_PREFIX,
    PROBABILITIES_PREFIX,
    SCAN_SECONDS,
    TOPK_CLASS_PREFIX,
    TOPK_PROB_PREFIX,
)
from ood_ray.io import storage
from ood_ray.io.memory import default_decode_budget
from ood_ray.run.sink import PartSink
from ood_ray.stages.base import Stage, StageResult
from ood_ray.stats.image import CHANNEL_STAT_NAMES
from ood_ray.tables import CHANNELS_SCHEMA, PREDICTIONS_SCHEMA

log = logging.getLogger(__name__)

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
            or name in (INPUT_ERROR, FETCH_SECONDS, SCAN_SECONDS)]
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
        ok = pc.equal(block.column("status"), "ok")
        in_split = pc.equal(block.column("split"), self.reference_split) if self.reference_split is not None else ok
        reference = int(pc.sum(pc.fill_null(pc.and_(ok, in_split), False)).as_py() or 0)
        return {"statuses": statuses, "seconds": seconds, "reference": {"rows": reference}}


class ScanStage(Stage):
    name = "scan"
    reads = ("io", "stats", "ray", "ood", "embed", "autoencoder")
    writes = ("images", "channels", "predictions")

    def run(self, ctx: Any) -> StageResult:
        import ray

        from ood_ray.embed.preprocess import preprocessing_key
        from ood_ray.progress import ProgressLogger, start_tracker
        from ood_ray.run.ray_runtime import configure_ray_data
        from ood_ray.scan import ScanSettings, scan_batch
        from ood_ray.stages.embed import EmbedStage

        cfg = ctx.section(self)
        staged = bool(ctx.infos) or cfg.autoencoder.enabled
        sink = ScanSink(ctx.layout.out, ctx.layout.run_id, staged={"images"} if staged else (),
                        ledger_dir=ctx.layout.ledger_dir if cfg.ray.ledger else None, retry=ctx.retry,
                        reference_split=cfg.ood.reference_split)
        manifest = self._remaining(ctx, sink)
        started = time.perf_counter()
        if manifest.num_rows:
            configure_ray_data(ctx.config)
            model_inputs = {preprocessing_key(info.data_config): info.data_config for info in ctx.infos}
            settings = ScanSettings(
                max_pixels=cfg.io.max_pixels, max_file_bytes=cfg.io.max_file_bytes, fetch_threads=cfg.io.fetch_threads,
                per_channel_sharpness=cfg.stats.per_channel_sharpness, model_inputs=tuple(model_inputs.items()),
                autoencoder_size=cfg.autoencoder.image_size if cfg.autoencoder.enabled else 0,
                max_decode_bytes=cfg.io.max_decode_bytes, all_frames=cfg.io.check_all_frames,
                task_num_cpus=cfg.ray.task_num_cpus, run_id=ctx.layout.run_id, retry=ctx.retry)
            tracker = start_tracker(cfg.ray.helper_resources)
            blocks = [manifest.slice(i, cfg.io.rows_per_block) for i in range(0, manifest.num_rows, cfg.io.rows_per_block)]
            dataset = ray.data.from_arrow(blocks).map_batches(
                scan_batch, batch_format="pyarrow", batch_size=None,
                fn_kwargs={"settings": settings, "progress": tracker}, num_cpus=cfg.ray.task_num_cpus,
                # An op with a ray_remote_args_fn is never fused into the following actor map:
                # decoding stays in parallel CPU tasks, not in the (few) embedding actors.
                ray_remote_args_fn=_no_extra_remote_args)
            steps = {"decode": manifest.num_rows}
            if ctx.infos:
                dataset = EmbedStage.operator(dataset, ctx, tracker)
                steps["embed"] = manifest.num_rows
            before = ctx.ledger.read_progress() if ctx.resumed else {}

            def snapshot(totals: dict[str, int]) -> None:
                ctx.ledger.write_progress({step: totals.get(step, 0) + before.get(step, 0) for step in steps})

            with ProgressLogger(tracker, steps, cfg.ray.progress_interval_s, snapshot):
                dataset.write_datasink(sink)
            ray.kill(tracker)
        seconds = time.perf_counter() - started
        statuses = {k: int(v) for k, v in sorted(sink.totals.get("statuses", {}).items())}
        reference_rows = int(sink.totals.get("reference", {}).get("rows", 0))
        reference_split = cfg.ood.reference_split if reference_rows else None
        if reference_split is None:
            log.info("no ok rows in reference split %r: the reference is every ok row", cfg.ood.reference_split)
        state = {
            "status_counts": statuses,
            "worker_seconds": {k: round(v, 3) for k, v in sink.totals.get("seconds", {}).items()},
            "images_per_second": round(manifest.num_rows / seconds, 2) if manifest.num_rows and seconds > 0 else None,
            "reference_split": reference_split,
            "reference_rows": reference_rows if reference_split else statuses.get("ok", 0),
            "max_decode_bytes": cfg.io.max_decode_bytes or default_decode_budget(cfg.ray.task_num_cpus),
        }
        files = {table: entries for table, entries in sink.files.items() if entries and table not in sink.staged}
        return StageResult(files=files, staged={"images": [uri for uri, _ in sink.files["images"]]} if staged else {},
                           state=state)

    def _remaining(self, ctx: Any, sink: ScanSink) -> pa.Table:
        """The manifest rows still to scan: all of them, or on resume those no recorded part holds."""
        if not ctx.resumed:
            return ctx.manifest
        records = ctx.ledger.read_parts()
        kept: set[str] = set()
        recorded_files = set()
        for record in records:
            sink.absorb(record)
            for table, entries in record.get("tables", {}).items():
                recorded_files.update(uri for uri, _ in entries)
                if table == "images":
                    for uri, _ in entries:
                        kept.update(storage.read_parquet(uri, ["image_id"], ctx.retry).column("image_id").to_pylist())
        orphans = [uri for folder in ("images", "channels", "predictions", "_staging/images")
                   for uri, _ in storage.list_files(storage.join(ctx.layout.root, folder)) if uri not in recorded_files]
        if orphans:
            log.info("resume: removing %d part files that were written but not recorded", len(orphans))
            storage.delete_files(orphans)
        remaining = ctx.manifest.filter(pc.invert(pc.is_in(ctx.manifest.column("image_id"), pa.array(sorted(kept), pa.string()))))
        progress = ctx.ledger.read_progress()
        decoded_before = int(progress.get("decode", 0))
        twice = max(0, decoded_before - len(kept))
        ctx.resume_report.update({
            "rows_kept": len(kept), "parts_kept": len(records), "rows_scanned_again": remaining.num_rows,
            "decoded_before_interruption_at_least": decoded_before,
            "decoded_twice_at_least": ctx.resume_report.get("decoded_twice_at_least", 0) + twice})
        ctx.resume_report["share_decoded_twice"] = round(ctx.resume_report["decoded_twice_at_least"]
                                                         / max(1, ctx.manifest.num_rows), 4)
        ctx.ledger.write_resume(ctx.resume_report)
        log.info("resume: %d rows kept from %d recorded parts, %d rows to scan", len(kept), len(records), remaining.num_rows)
        return remaining


def _no_extra_remote_args() -> dict[str, Any]:
    return {}

