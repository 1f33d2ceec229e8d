"""Work over the part files of a table without bringing the table to the driver.

A global pass (lint thresholds, duplicate groups) is written once against the :class:`Parts`
interface and runs either

- as Ray tasks over the part files of a run (:class:`RayParts`): one task per group of parts (enough
  groups to keep every CPU of the cluster busy, at most ``max_parts_per_task`` parts each), each
  reading only the columns it needs, retried when its worker dies (``max_retries=-1``);
- the same work in the driver process over the same files (:class:`InProcessParts`), for tables
  of at most ``ray.driver_pass_mb`` megabytes of part files (:func:`parts_for`): a pass over a
  small table then costs its reads, not a round of task start-ups (lint makes eight passes); or
- over tables held in memory (:class:`LocalParts`): tests, the same functions.

Three shapes of work:

- :meth:`Parts.merge`: ``fn(table, spec)`` per part, results combined by ``merge(total, result)``
  as they arrive (:func:`ray.wait`); the driver holds one running total.
- :meth:`Parts.shuffle`: a hash-partitioned map/reduce -- ``map_fn(table, spec)`` returns one
  result per partition (``spec["partitions"]`` of them, a task with that many returns), and
  ``reduce_fn(results, spec)`` runs once per partition over what every map task sent to it. Map
  outputs stay in the object store; the driver holds references and the reduced results.
- :meth:`Parts.write`: ``fn(tables, spec)`` per group of parts, its table written as a part file of
  the run by the task that made it; the driver gets ``(uri, rows)`` back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ood_ray.io import storage

Fn = Callable[..., Any]


class Parts:
    """The interface both executors share (see module docstring)."""

    def merge(self, fn: Fn, spec: dict[str, Any], columns: list[str], merge: Fn, empty: Fn) -> Any:
        raise NotImplementedError

    def shuffle(self, map_fn: Fn, reduce_fn: Fn, spec: dict[str, Any], columns: list[str]) -> list[Any]:
        raise NotImplementedError

    def write(self, fn: Fn, spec: dict[str, Any], columns: list[str] | None, table: str, prefix: str = "",
              one_per_part: bool = False) -> Any:
        """``columns=None``: every column; ``prefix`` starts the written parts' names;
        ``one_per_part``: one output per input part (a rewrite that keeps the table's files)."""
        raise NotImplementedError


class LocalParts(Parts):
    """The work over tables held in memory (tests, small data); ``write`` returns the table."""

    def __init__(self, tables: list[pa.Table]) -> None:
        self.tables = tables

    def _select(self, columns: list[str] | None) -> list[pa.Table]:
        if columns is None:
            return list(self.tables)
        return [t.select([c for c in columns if c in t.column_names]) for t in self.tables]

    def merge(self, fn: Fn, spec: dict[str, Any], columns: list[str], merge: Fn, empty: Fn) -> Any:
        return _merge_tables(self._select(columns), fn, spec, merge, empty)

    def shuffle(self, map_fn: Fn, reduce_fn: Fn, spec: dict[str, Any], columns: list[str]) -> list[Any]:
        mapped = [map_fn(table, spec) for table in self._select(columns)]
        return [reduce_fn([m[p] for m in mapped], spec) for p in range(spec["partitions"])]

    def write(self, fn: Fn, spec: dict[str, Any], columns: list[str] | None, table: str, prefix: str = "",
              one_per_part: bool = False) -> pa.Table:
        return fn(self._select(columns), spec)


def _merge_tables(tables: list[pa.Table], fn: Fn, spec: dict[str, Any], merge: Fn, empty: Fn) -> Any:
    total = empty()
    for table in tables:
        total = merge(total, fn(table, spec))
    return total


def _read(uris: list[str], columns: list[str], retry: storage.RetryPolicy) -> list[pa.Table]:
    return [storage.read_parquet_present(uri, columns, retry) for uri in uris]


def _merge_task(uris: list[str], fn: Fn, spec: dict[str, Any], columns: list[str], merge: Fn, empty: Fn,
                retry: storage.RetryPolicy) -> Any:
    return _merge_tables(_read(uris, columns, retry), fn, spec, merge, empty)


def _map_task(uris: list[str], map_fn: Fn, spec: dict[str, Any], columns: list[str],
              retry: storage.RetryPolicy) -> Any:
    outputs = [map_fn(table, spec) for table in _read(uris, columns, retry)]
    by_partition = [[out[p] for out in outputs] for p in range(spec["partitions"])]
    return tuple(by_partition) if spec["partitions"] > 1 else by_partition[0]


def _reduce_task(reduce_fn: Fn, spec: dict[str, Any], *groups: list[Any]) -> Any:
    return reduce_fn([item for group in groups for item in group], spec)


def _write_task(uris: list[str], fn: Fn, spec: dict[str, Any], columns: list[str], table: str, out: str,
                run_id: str, part: str, retry: storage.RetryPolicy) -> tuple[str, int] | None:
    from ood_ray.run.layout import RunLayout

    data = fn(_read(uris, columns, retry), spec)
    if data.num_rows == 0:
        return None
    return RunLayout(out, run_id).write_part(table, part, data, retry), data.num_rows


def group_size(parts: int, most: int, num_cpus: float) -> int:
    """Parts per task: at least four tasks per CPU of the cluster while there are parts for them,
    at most ``most`` parts per task (so that the number of results the driver merges stays small)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else 1.0
    tasks = max(1, int(4 * cpus / max(num_cpus, 1e-3)))
    return max(1, min(most, -(-parts // tasks)))


class RayParts(Parts):
    """The work as Ray tasks over the part files ``uris``; ``layout`` receives written parts."""

    def __init__(self, uris: list[str], layout: Any = None, retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
                 num_cpus: float = 1.0, max_parts_per_task: int = 64) -> None:
        self.uris, self.layout, self.retry, self.num_cpus = list(uris), layout, retry, num_cpus
        size = group_size(len(self.uris), max_parts_per_task, num_cpus)
        self.groups = [self.uris[i:i + size] for i in range(0, len(self.uris), size)]

    def _remote(self, fn: Fn, **options: Any) -> Any:
        import ray

        return ray.remote(num_cpus=self.num_cpus, max_retries=-1, **options)(fn)

    def merge(self, fn: Fn, spec: dict[str, Any], columns: list[str], merge: Fn, empty: Fn) -> Any:
        import ray

        task, spec_ref = self._remote(_merge_task), ray.put(spec)
        pending = [task.remote(group, fn, spec_ref, columns, merge, empty, self.retry) for group in self.groups]
        total = empty()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            total = merge(total, ray.get(ready[0]))
        return total

    def shuffle(self, map_fn: Fn, reduce_fn: Fn, spec: dict[str, Any], columns: list[str]) -> list[Any]:
        import ray

        partitions, spec_ref = spec["partitions"], ray.put(spec)
        mapper = self._remote(_map_task, num_returns=partitions)
        mapped = [mapper.remote(group, map_fn, spec_ref, columns, self.retry) for group in self.groups]
        if partitions == 1:
            mapped = [[ref] for ref in mapped]
        reducer = self._remote(_reduce_task)
        reduced = [reducer.remote(reduce_fn, spec_ref, *[refs[p] for refs in mapped]) for p in range(partitions)]
        del mapped
        return ray.get(reduced)

    def write(self, fn: Fn, spec: dict[str, Any], columns: list[str] | None, table: str,
              prefix: str = "", one_per_part: bool = False) -> list[tuple[str, int]]:
        import ray

        task, spec_ref = self._remote(_write_task), ray.put(spec)
        groups = [[uri] for uri in self.uris] if one_per_part else self.groups
        refs = [task.remote(group, fn, spec_ref, columns, table, self.layout.out, self.layout.run_id, f"{prefix}{i:05d}",
                            self.retry) for i, group in enumerate(groups)]
        return [written for written in ray.get(refs) if written is not None]


class InProcessParts(RayParts):
    """:class:`RayParts`' work run in this process, one group after the other (same files, same
    functions, same results; see module docstring)."""

    def merge(self, fn: Fn, spec: dict[str, Any], columns: list[str], merge: Fn, empty: Fn) -> Any:
        total = empty()
        for group in self.groups:
            total = merge(total, _merge_task(group, fn, spec, columns, merge, empty, self.retry))
        return total

    def shuffle(self, map_fn: Fn, reduce_fn: Fn, spec: dict[str, Any], columns: list[str]) -> list[Any]:
        partitions = spec["partitions"]
        mapped = [_map_task(group, map_fn, spec, columns, self.retry) for group in self.groups]
        if partitions == 1:
            mapped = [[out] for out in mapped]
        return [_reduce_task(reduce_fn, spec, *[out[p] for out in mapped]) for p in range(partitions)]

    def write(self, fn: Fn, spec: dict[str, Any], columns: list[str] | None, table: str,
              prefix: str = "", one_per_part: bool = False) -> list[tuple[str, int]]:
        groups = [[uri] for uri in self.uris] if one_per_part else self.groups
        written = [_write_task(group, fn, spec, columns, table, self.layout.out, self.layout.run_id, f"{prefix}{i:05d}",
                               self.retry) for i, group in enumerate(groups)]
        return [entry for entry in written if entry is not None]


#: More part files than this are never read in the driver (a stat each would add up).
DRIVER_MAX_FILES = 64


def parts_for(uris: list[str], layout: Any = None, retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
              num_cpus: float = 1.0, driver_max_bytes: int = 0) -> RayParts:
    """:class:`InProcessParts` when the files (at most :data:`DRIVER_MAX_FILES` of them) hold at
    most ``driver_max_bytes`` bytes, else :class:`RayParts` (see module docstring)."""
    if driver_max_bytes > 0 and len(uris) <= DRIVER_MAX_FILES:
        total = 0
        for uri in uris:
            fs, path = storage.resolve(uri)
            total += retry.call(lambda: fs.get_file_info(path), uri).size or 0
            if total > driver_max_bytes:
                break
        if total <= driver_max_bytes:
            return InProcessParts(uris, layout, retry, num_cpus)
    return RayParts(uris, layout, retry, num_cpus)
