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

from ood_ray.io.rundir import RunDirectory
from ood_ray.stats.image import CHANNEL_STAT_NAMES
from ood_ray.tables import CHANNEL_LIST_PREFIX, CHANNELS_SCHEMA


def split_scan_block(block: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``(images, channels)`` tables from one scan output block."""
    list_columns = [name for name in block.column_names if name.startswith(CHANNEL_LIST_PREFIX)]
    images = block.drop_columns(list_columns)
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
    columns = {
        "image_id": image_ids,
        "channel": pa.array(channel_index, pa.int32()),
        "band": pc.list_flatten(bands),
    }
    for name in CHANNEL_STAT_NAMES:
        columns[name] = pc.list_flatten(block.column(f"{CHANNEL_LIST_PREFIX}{name}").combine_chunks())
    channels = pa.Table.from_pydict(columns, schema=CHANNELS_SCHEMA)
    return images, channels


class ScanDatasink(Datasink):
    """Writes ``images`` and ``channels`` part files of one run; returns what it wrote."""

    def __init__(self, out: str, run_id: str) -> None:
        self.out = out
        self.run_id = run_id
        self.files: dict[str, list[tuple[str, int]]] = {"images": [], "channels": []}
        self.statuses: dict[str, int] = {}

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        run_dir = RunDirectory(self.out, self.run_id)
        images_parts, channels_parts = [], []
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            images, channels = split_scan_block(table)
            images_parts.append(images)
            channels_parts.append(channels)
        written: dict[str, Any] = {"images": [], "channels": [], "statuses": {}}
        if not images_parts:
            return written
        part = f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
        images = pa.concat_tables(images_parts)
        channels = pa.concat_tables(channels_parts)
        written["images"].append((run_dir.write_part("images", part, images), images.num_rows))
        written["channels"].append((run_dir.write_part("channels", part, channels), channels.num_rows))
        for status, count in zip(*pc.value_counts(images.column("status")).flatten()):
            written["statuses"][status.as_py()] = count.as_py()
        return written

    def on_write_complete(self, write_result: Any) -> None:
        for written in write_result.write_returns:
            for table in ("images", "channels"):
                self.files[table].extend(written[table])
            for status, count in written["statuses"].items():
                self.statuses[status] = self.statuses.get(status, 0) + count
