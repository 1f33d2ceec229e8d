"""Seeded samples of ``images`` rows drawn part by part: what the fits use (probes, Mahalanobis,
clusters, maps, the autoencoder, the kNN index's training set, drift statistics) without a driver
query over a whole column.

A sample is a *bottom-k* selection: the rows matching ``where``, optionally at most ``cap`` per
value of ``partition`` (say, per label), ordered by a seeded hash of ``image_id`` (ties by
``image_id``), the first ``limit``. The same DuckDB query runs on every part (a Ray task each, over
only the columns it needs) and then on the union of what the parts returned: that gives exactly
the rows of the query over the whole table, since a row among the first ``limit`` (or ``cap`` of
its group) of the whole is among the first of its own part, and rows from other parts can only
push rows out, never back in. The driver holds at most ``2 limit`` rows while merging.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa

from ood_ray.parts import LocalParts, Parts

#: Columns every sample may filter on (the run's reference selection uses them).
FILTER_COLUMNS = ("image_id", "status", "split", "label")


def hash_order(tag: str | int, column: str = "image_id") -> str:
    """SQL ordering key of a seeded, reproducible sample: ``hash(image_id || '#<tag>')``."""
    return f"hash({column} || '#{tag}')"


def sample_sql(columns: list[str], where: str, order: str, limit: int, partition: str | None = None,
               cap: int | None = None) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    ranked = f", row_number() OVER (PARTITION BY {partition} ORDER BY {order}, image_id) AS _rank" if partition else ""
    capped = f"WHERE _rank <= {int(cap)}" if partition else ""
    return (f"SELECT {names} FROM (SELECT {names}, {order} AS _key{ranked} FROM images WHERE {where}) {capped} "
            f"ORDER BY _key, image_id LIMIT {int(limit)}")


def query_part(table: pa.Table, sql: str, columns: tuple[str, ...] | list[str] = ()) -> pa.Table:
    """``sql`` over one part as the view ``images``, on one DuckDB thread (one task, one core);
    ``columns`` the part does not have (say, no split) are added as nulls first."""
    import duckdb

    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.register("images", table)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _run(table: pa.Table, spec: dict[str, Any]) -> pa.Table:
    return query_part(table, spec["sql"], spec.get("columns", ()))


def _merge(spec: dict[str, Any], total: pa.Table | None, part: pa.Table) -> pa.Table:
    if total is None:
        return part
    if part.num_rows == 0:
        return total
    return _run(pa.concat_tables([total, part], promote_options="default"), spec)


def _empty() -> None:
    return None


class Sampler:
    """Bottom-k samples of ``images`` over :class:`ood_ray.parts.Parts` (see module docstring)."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    @classmethod
    def of_tables(cls, tables: list[pa.Table]) -> Sampler:
        return cls(LocalParts(tables))

    def select(self, columns: list[str], where: str, order: str, limit: int, partition: str | None = None,
               cap: int | None = None) -> pa.Table:
        """The sample's ``columns`` (``image_id`` always among them, first)."""
        columns = ["image_id", *(c for c in columns if c != "image_id")]
        reads = list(dict.fromkeys([*columns, *FILTER_COLUMNS]))
        sql = sample_sql(reads, where, order, limit, partition, cap)
        spec = {"sql": sql, "columns": reads}
        merged = self.parts.merge(_run, spec, reads, functools.partial(_merge, spec), _empty)
        if merged is None:
            return pa.table({c: pa.array([]) for c in columns})
        return _run(merged, spec).select(columns)
