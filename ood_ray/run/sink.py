"""One sink base for every stage that writes rows: a part file per table per write task.

A subclass says which tables it writes and implements one hook, :meth:`PartSink.split` (block ->
``{table: rows}``); optionally :meth:`PartSink.summary` (per-task facts such as status counts,
summed on the driver). :meth:`PartSink.write` runs in the task: it concatenates the task's blocks,
writes each table's part into the run's folder (an intermediate table into its staging folder),
and -- when the sink keeps a ledger -- records the part in the run's ledger right after its files
are complete, so a resumed run keeps it. It returns the task's *record* (the parts and their rows,
the summary), which the driver absorbs as soon as the task completes: on Ray through
:meth:`PartSink.write_dataset`, without Ray from the process pool (:mod:`ood_ray.run.local`). The
rows absorbed per table are the stage's progress (:mod:`ood_ray.progress`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from ood_ray.io import storage
from ood_ray.run.layout import RunLayout
from ood_ray.run.ledger import Ledger, new_part_name

#: The column of a write task's output: its record, as JSON (one row per block written).
RECORD = "_record"


class PartSink:
    """Base of the stages' sinks (see module docstring)."""

    #: Tables this sink writes, in order.
    TABLES: tuple[str, ...] = ()

    def __init__(self, out: str, run_id: str, staged: Iterable[str] = (), ledger_dir: str | None = None,
                 retry: storage.RetryPolicy = storage.DEFAULT_RETRY, compacted: bool = False) -> None:
        self.out, self.run_id = out, run_id
        self.staged = frozenset(staged)
        #: The parts' codec: when the compact stage rewrites them (``compacted``), the faster
        #: :data:`ood_ray.io.storage.WORK_COMPRESSION` (compaction rewrites even a part left alone
        #: in its group, :func:`ood_ray.run.compact.kept_as_written`), else the kept one.
        self.compression = storage.WORK_COMPRESSION if compacted else storage.KEPT_COMPRESSION
        self.ledger_dir = ledger_dir
        self.retry = retry
        self.files: dict[str, list[tuple[str, int]]] = {table: [] for table in self.TABLES}
        self.totals: dict[str, Any] = {}
        #: Rows absorbed per table (the progress of the stage).
        self.rows: dict[str, int] = {}

    # -- hooks ----------------------------------------------------------------------------------
    def split(self, block: pa.Table) -> dict[str, pa.Table]:
        """``{table: rows}`` of one concatenated block (every table of :attr:`TABLES`)."""
        raise NotImplementedError

    def summary(self, block: pa.Table) -> dict[str, dict[str, float]]:
        """Per-task counts to sum on the driver (``{name: {key: number}}``)."""
        return {}

    # -- in the task ----------------------------------------------------------------------------
    def write(self, blocks: Iterable[pa.Table], task_index: int | None = None) -> dict[str, Any]:
        """Write the task's ``blocks`` as one part per table and return the task's record."""
        tables = [t for t in blocks if t.num_rows]
        written: dict[str, Any] = {"tables": {}, "summary": {}}
        if not tables:
            return written
        block = pa.concat_tables(tables, promote_options="default")
        layout = RunLayout(self.out, self.run_id)
        part = new_part_name(task_index)
        for table, rows in self.split(block).items():
            if rows.num_rows == 0:
                continue
            if table in self.staged:
                uri = layout.write_staged_part(table, part, rows, self.retry)
            else:
                uri = layout.write_part(table, part, rows, self.retry, self.compression)
            written["tables"][table] = [(uri, rows.num_rows)]
        written["summary"] = self.summary(block)
        if self.ledger_dir is not None:
            Ledger(self.ledger_dir).write_part({"part": part, **written}, self.retry)
        return written

    # -- on the driver --------------------------------------------------------------------------
    def write_dataset(self, dataset: Any, **ray_remote_args: Any) -> None:
        """Write every block of the Ray ``dataset`` (:meth:`write` in a task per block, which Ray Data
        fuses with the task before it when their resources match) and absorb each task's record on
        the driver as soon as the task completes -- what ``Dataset.write_datasink`` does, except
        that its records reach the driver one by one instead of all at the end, so the driver
        counts the progress itself. The tasks get a copy of the sink without the driver's totals
        (a resumed run's may hold a record per part)."""
        writer = copy.copy(self)
        writer.files, writer.totals, writer.rows = {}, {}, {}

        def write_block(batch: pa.Table) -> pa.Table:
            return pa.table({RECORD: [json.dumps(writer.write([batch]))]})

        records = dataset.map_batches(write_block, batch_format="pyarrow", batch_size=None, **ray_remote_args)
        for batch in records.iter_batches(batch_size=None, batch_format="pyarrow"):
            for record in batch.column(RECORD).to_pylist():
                self.absorb(json.loads(record))

    def progress(self, step: str, table: str, total: int, interval_s: float) -> Any:
        """The stage's progress line (:class:`ood_ray.progress.ProgressLogger`): ``step`` counts the
        rows absorbed into ``table`` from now on (a resumed run's recorded rows, absorbed before,
        are not counted), of ``total``."""
        from ood_ray.progress import ProgressLogger

        start = self.rows.get(table, 0)
        return ProgressLogger(lambda: {step: self.rows.get(table, 0) - start}, {step: total}, interval_s)

    def absorb(self, written: dict[str, Any]) -> None:
        """Add one task's (or one ledger record's) files and summary to the totals."""
        for table, entries in written.get("tables", {}).items():
            self.files.setdefault(table, []).extend((uri, rows) for uri, rows in entries)
            self.rows[table] = self.rows.get(table, 0) + sum(rows for _, rows in entries)
        for name, counts in written.get("summary", {}).items():
            total = self.totals.setdefault(name, {})
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
