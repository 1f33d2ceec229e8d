"""Coalescing a table's part files into files sized for readers.

The scan writes one part per table per write task (a few hundred to a few thousand rows), so a
10^9-image run would leave millions of small files, and every later pass (lint, dedup, clusters, a
user's DuckDB query) would pay an open and a footer per file. After the scan (and ``finalize``),
each table's parts are packed, in order, into groups of at least ``io.part_target_mb`` megabytes
(the last group takes the rest), and one Ray task per group of two or more files streams them into
one new part (:func:`merge_parts`): the inputs are read one at a time and written as row groups of
about ``ROW_GROUP_ROWS`` rows, so a task holds about one row group in memory. A table of ``B`` bytes
ends with at most ``ceil(B / target)`` files. The write tasks' parts are written with lz4 (cheaper
to write, read once here); a part alone in its group is rewritten too when it has that codec, so
every committed file is zstd (:func:`kept_as_written`). Column types that differ between parts (a
column that is all null in one part) are unified; parts that cannot be unified are kept as they are
(logged). The replaced parts stay until the commit, which removes every file of the run's table
folders that ``run.json`` does not list, so a run killed in the middle resumes from the recorded
parts and rewrites the same groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ood_ray.io import storage

log = logging.getLogger(__name__)

#: Rows per row group of a coalesced part (DuckDB and pyarrow read row groups in parallel).
ROW_GROUP_ROWS = 131_072
#: ...or fewer when a row group would hold more than this many bytes in memory.
ROW_GROUP_BYTES = 64 << 20


def plan_groups(entries: list[tuple[str, int]], sizes: dict[str, int], target_bytes: int) -> list[list[tuple[str, int]]]:
    """``entries`` (``(uri, rows)``, in order) packed into consecutive groups of at least
    ``target_bytes`` bytes each (``sizes``: bytes per uri), the last group holding the rest."""
    groups: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    held = 0
    for uri, rows in entries:
        current.append((uri, rows))
        held += sizes.get(uri, 0)
        if held >= target_bytes:
            groups.append(current)
            current, held = [], 0
    if current:
        groups.append(current)
    return groups


def unified_schema(uris: list[str], retry: storage.RetryPolicy) -> pa.Schema:
    """One schema every part can be cast to (nulls promoted to the other parts' types)."""
    import pyarrow.parquet as pq

    schemas = []
    for uri in uris:
        fs, path = storage.resolve(uri)
        schemas.append(retry.call(lambda: pq.read_schema(path, filesystem=fs), uri))
    return pa.unify_schemas(schemas, promote_options="permissive")


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order and types (missing columns null)."""
    if table.schema == schema:
        return table
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _row_groups(uris: list[str], schema: pa.Schema, retry: storage.RetryPolicy) -> Iterator[pa.Table]:
    held: list[pa.Table] = []
    rows = size = 0
    for uri in uris:
        table = _conformed(storage.read_parquet(uri, retry=retry), schema)
        held.append(table)
        rows += table.num_rows
        size += table.nbytes
        if rows >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES:
            yield pa.concat_tables(held)
            held, rows, size = [], 0, 0
    if held:
        yield pa.concat_tables(held)


def merge_parts(uris: list[str], target: str, retry: storage.RetryPolicy) -> list[tuple[str, int]]:
    """Stream ``uris`` into the one part ``target``: ``[(target, rows)]``; the inputs unchanged
    (``[(uri, rows)]`` each) when their columns cannot be unified."""
    import pyarrow.parquet as pq

    try:
        schema = unified_schema(uris, retry)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        log.warning("parts not coalesced (their columns differ: %s): %s ...", exc, uris[0])
        out = []
        for uri in uris:
            fs, path = storage.resolve(uri)
            out.append((uri, retry.call(lambda: pq.read_metadata(path, filesystem=fs).num_rows, uri)))
        return out
    rows = storage.write_parquet_stream(target, schema, _row_groups(uris, schema, retry), retry)
    return [(target, rows)]


def kept_as_written(uri: str, retry: storage.RetryPolicy) -> bool:
    """Whether a part alone in its group can stay as it is: it was written with the codec of the
    files a run keeps (a write task's part that compaction was to rewrite has the faster one,
    :data:`ood_ray.io.storage.WORK_COMPRESSION`, which older Parquet readers may not know)."""
    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri)
    meta = retry.call(lambda: pq.read_metadata(path, filesystem=fs), uri)
    codecs = {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)}
    return codecs <= {storage.KEPT_COMPRESSION.upper(), "UNCOMPRESSED"}


def coalesce_table(layout: Any, table: str, entries: list[tuple[str, int]], target_bytes: int,
                   retry: storage.RetryPolicy, num_cpus: float = 1.0, local: bool = False
                   ) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """The table's parts after coalescing (``entries`` in order; a group of one file kept unless it
    was written with the faster codec, :func:`kept_as_written`) and a report ``{files_before,
    files_after, bytes}``; one Ray task per group (``local``: in this process)."""
    sizes = dict(storage.list_files(storage.join(layout.root, table), retry))
    groups = plan_groups(entries, sizes, target_bytes)
    jobs = {i: ([uri for uri, _ in group], layout.part_uri(table, f"c{i:05d}"), retry)
            for i, group in enumerate(groups) if len(group) > 1 or not kept_as_written(group[0][0], retry)}
    if local:
        merged = {i: merge_parts(*job) for i, job in jobs.items()}
    else:
        import ray

        task = ray.remote(num_cpus=num_cpus, max_retries=-1)(merge_parts)
        merged = dict(zip(jobs, ray.get([task.remote(*job) for job in jobs.values()])))
    out = [entry for i, group in enumerate(groups) for entry in merged.get(i, group)]
    if sum(r for _, r in out) != sum(r for _, r in entries):
        raise RuntimeError(f"coalescing {table}: {sum(r for _, r in entries)} rows in, {sum(r for _, r in out)} out")
    return out, {"files_before": len(entries), "files_after": len(out),
                 "bytes": int(sum(sizes.get(uri, 0) for uri, _ in entries))}
