"""Ray Data sink that writes the scan output as the ``images`` and ``channels`` tables.

It follows Ray's :class:`ray.data.Datasink` lifecycle. Each write task turns the blocks it receives
into one ``images`` part file (per-channel list columns dropped) and one ``channels`` part file
(the lists exploded to one row per channel), both named with the run id so that nothing is
visible until :meth:`ood_ray.io.rundir.RunDirectory.commit` lists them. The driver collects every
task's file list and row counts from :meth:`on_write_complete`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from ood_ray.embed.actor import (
    LOGITS_PREFIX,
    PROBABILITIES_PREFIX,
    TOPK_CLASS_PREFIX,
    TOPK_PROB_PREFIX,
)
from ood_ray.io.rundir import RunDirectory
from ood_ray.stats.image import CHANNEL_STAT_NAMES
from ood_ray.tables import CHANNEL_LIST_PREFIX, CHANNELS_SCHEMA, INPUT_ERROR, PREDICTIONS_SCHEMA


def predictions_of(block: pa.Table) -> pa.Table:
    """The ``predictions`` rows (one per image and classifier) carried by an embedded block."""
    parts = []
    for name in block.column_names:
        if not name.startswith(TOPK_CLASS_PREFIX):
            continue
        alias = name[len(TOPK_CLASS_PREFIX):]
        keep = pc.is_valid(block.column(name))
        rows = block.filter(keep)
        full = f"{PROBABILITIES_PREFIX}{alias}"
        logits = f"{LOGITS_PREFIX}{alias}"
        parts.append(pa.Table.from_pydict({
            "image_id": rows.column("image_id"),
            "model": pa.array([alias] * rows.num_rows, pa.string()),
            "top_classes": rows.column(name),
            "top_probabilities": rows.column(f"{TOPK_PROB_PREFIX}{alias}"),
            "probabilities": rows.column(full) if full in rows.column_names else pa.nulls(rows.num_rows, pa.list_(pa.float32())),
            "logits": rows.column(logits) if logits in rows.column_names else pa.nulls(rows.num_rows, pa.list_(pa.float32())),
        }, schema=PREDICTIONS_SCHEMA))
    return pa.concat_tables(parts) if parts else PREDICTIONS_SCHEMA.empty_table()


def split_scan_block(block: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """``(images, channels, predictions)`` tables from one scan (or embedded) output block.

    ``images`` keeps the ``_emb_`` columns (the finalize pass turns them into ``embeddings``).
    """
    predictions = predictions_of(block)
    list_columns = [name for name in block.column_names
                    if name.startswith((CHANNEL_LIST_PREFIX, PROBABILITIES_PREFIX, LOGITS_PREFIX, TOPK_CLASS_PREFIX,
                                        TOPK_PROB_PREFIX))]
    images = block.drop_columns(list_columns)
    if "listed_size" in images.column_names:
        # A missing object has no fetched size; the listing's size (when listed) stands in.
        sizes = pc.coalesce(images.column("file_size"), images.column("listed_size"))
        images = images.set_column(images.column_names.index("file_size"), "file_size", sizes)
        images = images.drop_columns(["listed_size"])
    if INPUT_ERROR in images.column_names:
        images = images.drop_columns([INPUT_ERROR])

    bands = block.column(f"{CHANNEL_LIST_PREFIX}band").combine_chunks()
    parents = pc.list_parent_indices(bands)
    image_ids = pc.take(block.column("image_id"), parents)
    offsets = bands.offsets.to_numpy()
    starts = offsets[parents.to_numpy()] if len(parents) else offsets[:0]
    channel_index = (pa.array(range(len(parents)), pa.int64()).to_numpy() - starts).astype("int32")
    columns = {
        "image_id": image_ids,
        "channel": pa.array(channel_index, pa.int32()),
        "band": pc.list_flatten(bands),
    }
    for name in CHANNEL_STAT_NAMES:
        columns[name] = pc.list_flatten(block.column(f"{CHANNEL_LIST_PREFIX}{name}").combine_chunks())
    channels = pa.Table.from_pydict(columns, schema=CHANNELS_SCHEMA)
    return images, channels, predictions


class ScanDatasink(Datasink):
    """Writes one run's ``channels``, ``predictions`` and ``images`` part files.

    With ``staged=True`` (a run with models) the ``images`` parts go to the run's staging folder,
    still holding the ``_emb_`` columns, for the finalize pass; otherwise straight to ``images``.
    """

    TABLES = ("images", "channels", "predictions")

    def __init__(self, out: str, run_id: str, staged: bool = False) -> None:
        self.out = out
        self.run_id = run_id
        self.staged = staged
        self.files: dict[str, list[tuple[str, int]]] = {table: [] for table in self.TABLES}
        self.statuses: dict[str, int] = {}

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        run_dir = RunDirectory(self.out, self.run_id)
        parts: dict[str, list[pa.Table]] = {table: [] for table in self.TABLES}
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            for name, part in zip(self.TABLES, split_scan_block(table)):
                parts[name].append(part)
        written: dict[str, Any] = {table: [] for table in self.TABLES}
        written["statuses"] = {}
        if not parts["images"]:
            return written
        part = f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
        for name in self.TABLES:
            data = pa.concat_tables(parts[name])
            if name == "predictions" and data.num_rows == 0:
                continue
            uri = run_dir.write_staged_part(name, part, data) if name == "images" and self.staged else run_dir.write_part(name, part, data)
            written[name].append((uri, data.num_rows))
        images = pa.concat_tables(parts["images"])
        for status, count in zip(*pc.value_counts(images.column("status")).flatten()):
            written["statuses"][status.as_py()] = count.as_py()
        return written

    def on_write_complete(self, write_result: Any) -> None:
        for written in write_result.write_returns:
            for table in self.TABLES:
                self.files[table].extend(written[table])
            for status, count in written["statuses"].items():
                self.statuses[status] = self.statuses.get(status, 0) + count
