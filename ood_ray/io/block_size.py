"""How many rows a scan block holds when ``io.rows_per_block`` is not set: sized by the work.

A block is one Ray task (read its rows, fetch, decode, compute, write). Too small and the task's
fixed cost (scheduling, a Parquet read and write, the progress report) dominates: 32 x 32 JPEGs
take about 0.2 ms each, so 64 of them are 13 ms of work for a task that costs several ms more.
Too large and a block holds too much memory, a kill loses more work, and a small run cannot use
every core. The work of a row is about proportional to its bytes (decode dominates, and bytes
follow pixels within a format), so

    seconds per row ~ ROW_OVERHEAD_S + mean object bytes / BYTES_PER_SECOND
    rows per block  = io.block_seconds / seconds per row

rounded to the nearest power of two (in log scale, so a block is 0.71-1.41x ``io.block_seconds`` of
work by the model) in ``[MIN_ROWS, MAX_ROWS]`` (powers of two divide the manifest parts' 8,192-row
row groups, so any choice reads whole blocks from one row group), and capped -- rounded down -- so
that a block's resized model inputs (``H * W * 3`` bytes per model per row) stay under
``MAX_BLOCK_OUTPUT_BYTES``, and so that there are at least ``MIN_BLOCKS_PER_CPU`` blocks per CPU
while the run has rows for them. Rounding the work down instead left CIFAR-10 blocks at 1,024 rows
(0.34 s of work, where a task's fixed cost -- dispatch, the manifest read, the part writes -- is ~20
ms): blocks of 2,048 rows scanned the 50,000 training JPEGs 2-4% faster in alternated single audits
and ~1% in ``benchmarks/bench_e2e.py``'s rounds (2026-12-07). The mean size comes from the listing's
``listed_size`` when the source is a folder or a prefix, else from the sizes of a sample of the
manifest's objects (a stat or a HEAD each). The constants are round numbers within 2x of
``benchmarks/bench_scan.py`` on this project's machine (2026-11-26, per core: 2,300-2,700 CIFAR-10
JPEGs of 920 bytes, model 0.28 ms against 0.4 ms measured; 44-49 DTD photos of ~200 KB, model 50 ms
against 21 ms measured) -- the estimate only has to land on the right power of two within a factor
of two or so.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs

from ood_ray.io import storage

log = logging.getLogger(__name__)

ROW_OVERHEAD_S = 5e-5
BYTES_PER_SECOND = 4e6
MIN_ROWS = 4
MAX_ROWS = 4096
MAX_BLOCK_OUTPUT_BYTES = 32 << 20
MIN_BLOCKS_PER_CPU = 4
#: Objects whose size is sampled when the listing has none.
SAMPLE = 64


def rows_for(mean_bytes: float | None, block_seconds: float, row_output_bytes: int = 0, rows: int = 0,
             cpus: float = 1.0) -> int:
    """Rows per block for objects of ``mean_bytes`` (see module docstring); 64 when unknown."""
    if mean_bytes is None:
        exponent = 6
    else:
        exponent = round(math.log2(block_seconds / (ROW_OVERHEAD_S + mean_bytes / BYTES_PER_SECOND)))
    caps = [MAX_ROWS]
    if row_output_bytes:
        caps.append(MAX_BLOCK_OUTPUT_BYTES / row_output_bytes)
    if rows:
        caps.append(rows / max(1.0, MIN_BLOCKS_PER_CPU * cpus))
    exponent = min(exponent, math.floor(math.log2(max(min(caps), MIN_ROWS))))
    return 1 << max(exponent, int(math.log2(MIN_ROWS)))


def _sampled_rows(parts: list[tuple[str, int]], retry: storage.RetryPolicy) -> Any:
    """Up to :data:`SAMPLE` rows (``uri`` and, when present, ``listed_size``) from the first row
    group of up to eight evenly spaced parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chosen = parts[:: max(1, len(parts) // 8)][:8]
    tables = []
    for uri, _ in chosen:
        fs, path = storage.resolve(uri)

        def read(path: str = path, fs: Any = fs) -> Any:
            with fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                names = [c for c in ("uri", "listed_size") if c in parquet.schema_arrow.names]
                return parquet.read_row_group(0, columns=names)

        table = retry.call(read, uri)
        step = max(1, table.num_rows // max(1, SAMPLE // len(chosen)))
        tables.append(table.take(pa.array(range(0, table.num_rows, step))[: SAMPLE // len(chosen) or 1]))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _stat_sizes(uris: list[str], retry: storage.RetryPolicy) -> list[int]:
    def size(uri: str) -> int | None:
        try:
            fs, path = storage.resolve(uri)
            info = retry.call(lambda: fs.get_file_info(path), uri)
            return int(info.size) if info.type == pafs.FileType.File else None
        except Exception:  # noqa: BLE001 - a missing or unreadable object is the scan's to report
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [s for s in pool.map(size, uris) if s is not None]


def mean_object_bytes(parts: list[tuple[str, int]], retry: storage.RetryPolicy) -> float | None:
    """The mean size of the inputs' objects, from a sample (see module docstring); None when unknown."""
    sample = _sampled_rows(parts, retry)
    if sample is None or sample.num_rows == 0:
        return None
    if "listed_size" in sample.column_names:
        sizes = [s for s in sample.column("listed_size").to_pylist() if s is not None]
    else:
        sizes = _stat_sizes([u for u in sample.column("uri").to_pylist() if u], retry)
    return sum(sizes) / len(sizes) if sizes else None


def choose_rows_per_block(parts: list[tuple[str, int]], config: Any, retry: storage.RetryPolicy, cpus: float,
                          row_output_bytes: int = 0) -> int:
    """``io.rows_per_block`` when set, else the size the work calls for (see module docstring)."""
    if config.io.rows_per_block:
        return int(config.io.rows_per_block)
    mean = mean_object_bytes(parts, retry)
    rows = rows_for(mean, config.io.block_seconds, row_output_bytes, sum(r for _, r in parts),
                    cpus / max(config.ray.task_num_cpus, 1e-3))
    log.info("scan blocks of %d rows (objects of %s bytes on average, io.block_seconds = %s)", rows,
             f"{mean:,.0f}" if mean is not None else "unknown", config.io.block_seconds)
    return rows
