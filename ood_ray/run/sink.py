"""One Datasink base for every stage that writes rows: a part file per table per write task.

It follows Ray's :class:`ray.data.Datasink` lifecycle. A subclass says which tables it writes and
implements one hook, :meth:`PartSink.split` (block -> ``{table: rows}``); optionally
:meth:`PartSink.summary` (per-task facts such as status counts, summed on the driver). The base
concatenates the task's blocks, writes each table's part into the run's folder (an intermediate
table into its staging folder), and -- when the sink keeps a ledger -- records the part in the
run's ledger right after its files are complete, so a resumed run keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from ood_ray.io import storage
from ood_ray.run.layout import RunLayout
from ood_ray.run.ledger import Ledger, new_part_name


class PartSink(Datasink):
    """Base of the stages' sinks (see module docstring)."""

    #: Tables this sink writes, in order.
    TABLES: tuple[str, ...] = ()

    def __init__(self, out: str, run_id: str, staged: Iterable[str] = (), ledger_dir: str | None = None,
                 retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> None:
        self.out, self.run_id = out, run_id
        self.staged = frozenset(staged)
        self.ledger_dir = ledger_dir
        self.retry = retry
        self.files: dict[str, list[tuple[str, int]]] = {table: [] for table in self.TABLES}
        self.totals: dict[str, Any] = {}

    # -- hooks ----------------------------------------------------------------------------------
    def split(self, block: pa.Table) -> dict[str, pa.Table]:
        """``{table: rows}`` of one concatenated block (every table of :attr:`TABLES`)."""
        raise NotImplementedError

    def summary(self, block: pa.Table) -> dict[str, dict[str, float]]:
        """Per-task counts to sum on the driver (``{name: {key: number}}``)."""
        return {}

    # -- lifecycle ------------------------------------------------------------------------------
    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        written: dict[str, Any] = {"tables": {}, "summary": {}}
        if not tables:
            return written
        block = pa.concat_tables(tables, promote_options="default")
        layout = RunLayout(self.out, self.run_id)
        part = new_part_name(ctx.task_idx)
        for table, rows in self.split(block).items():
            if rows.num_rows == 0:
                continue
            if table in self.staged:
                uri = layout.write_staged_part(table, part, rows, self.retry)
            else:
                uri = layout.write_part(table, part, rows, self.retry)
            written["tables"][table] = [(uri, rows.num_rows)]
        written["summary"] = self.summary(block)
        if self.ledger_dir is not None:
            Ledger(self.ledger_dir).write_part({"part": part, **written}, self.retry)
        return written

    def on_write_complete(self, write_result: Any) -> None:
        for written in write_result.write_returns:
            self.absorb(written)

    def absorb(self, written: dict[str, Any]) -> None:
        """Add one task's (or one ledger record's) files and summary to the totals."""
        for table, entries in written.get("tables", {}).items():
            self.files.setdefault(table, []).extend((uri, rows) for uri, rows in entries)
        for name, counts in written.get("summary", {}).items():
            total = self.totals.setdefault(name, {})
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
