"""DuckDB over a run directory: each table is a view of the same name, plus ``leakage``.

Local runs are read with ``read_parquet`` over the exact file list of ``run.json``; runs on S3 are
read through a ``pyarrow.dataset`` on the S3 filesystem of the environment (DuckDB's own httpfs
extension is not needed), with projection and filter pushdown.

Derived views:

- ``leakage``: duplicate groups whose members come from more than one split, one row per member
  (``group_id``, ``kind``, ``method``, ``splits``, ``image_id``, ``split``, ``label``, ``uri``).
- ``lint_by_class``: flag counts per ``label`` and ``metric`` (the DataEval guide's table, long form).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from ood_ray.io import storage
from ood_ray.run.layout import read_run, table_files
from ood_ray.tables import TABLES

log = logging.getLogger(__name__)

#: Tables with a fixed schema get an empty view when a run did not write them.
_EMPTY_SCHEMAS = {name: schema for name, (schema, _) in TABLES.items() if schema is not None and name != "evaluation"}

LEAKAGE_VIEW = """
CREATE OR REPLACE VIEW leakage AS
WITH spans AS (
    SELECT d.group_id, count(DISTINCT i.split) AS splits
    FROM duplicates d JOIN images i USING (image_id)
    GROUP BY d.group_id
    HAVING count(DISTINCT i.split) > 1
)
SELECT d.group_id, d.kind, d.method, s.splits, d.image_id, i.split, i.label, i.uri
FROM duplicates d JOIN spans s USING (group_id) JOIN images i USING (image_id)
ORDER BY d.group_id, i.split, d.image_id
"""

LINT_BY_CLASS_VIEW = """
CREATE OR REPLACE VIEW lint_by_class AS
SELECT i.label, l.metric, count(*) AS flags
FROM lint l JOIN images i USING (image_id)
GROUP BY ALL
ORDER BY i.label, l.metric
"""


def register_table(con: duckdb.DuckDBPyConnection, name: str, uris: list[str], schema: pa.Schema | None = None) -> None:
    """Make ``name`` a view over the Parquet files ``uris`` (local or S3); empty -> typed empty view."""
    if not uris:
        empty = (schema or pa.schema([])).empty_table()
        con.register(f"_{name}_empty", empty)
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "_{name}_empty"')
        return
    if storage.is_s3(uris[0]):
        fs = storage.s3_filesystem()
        dataset = pads.dataset([storage.resolve(u)[1] for u in uris], filesystem=fs, format="parquet")
        con.register(f"_{name}_dataset", dataset)
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "_{name}_dataset"')
        return
    listing = ", ".join("'" + u.replace("'", "''") + "'" for u in uris)
    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet([{listing}], union_by_name = true)')


def connect(out: str, run: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table of the committed run in ``out``."""
    out = storage.normalize_uri(out)
    run = run if run is not None else read_run(out)
    con = duckdb.connect()
    for table in run["tables"]:
        register_table(con, table, table_files(out, run, table), _EMPTY_SCHEMAS.get(table))
    for table, schema in _EMPTY_SCHEMAS.items():
        if table not in run["tables"]:
            register_table(con, table, [], schema)
    con.execute(LEAKAGE_VIEW)
    con.execute(LINT_BY_CLASS_VIEW)
    return con


def run_query(out: str, sql: str) -> pa.Table:
    """Run ``sql`` against the views of ``out`` and return the result as Arrow."""
    con = connect(out)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def format_table(table: pa.Table, fmt: str = "table", max_rows: int = 200) -> str:
    """Render a result as an aligned text table, CSV or JSON lines; binary columns (``gray16``) as
    hexadecimal text (``bytes.fromhex`` reads them back; the text table shows their first bytes)."""
    binary = {f.name for f in table.schema if _binary(f.type)}
    table = hex_ready(table)
    if fmt == "json":
        return "\n".join(json.dumps(row, default=str) for row in table.to_pylist())
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(csv_ready(table), buffer)
        return buffer.getvalue().decode().rstrip("\n")
    rows = table.slice(0, max_rows).to_pylist()
    names = table.column_names
    cells = [[_cell(row[n]) for n in names] for row in rows]
    cells = [[_short_hex(c) if n in binary else c for n, c in zip(names, cell)] for cell in cells]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    if table.num_rows > max_rows:
        lines.append(f"... {table.num_rows - max_rows} more rows (use --format csv for all)")
    lines.append(f"({table.num_rows} rows)")
    return "\n".join(lines)


#: Characters of a binary cell the text table shows (the rest as "...").
HEX_SHOWN = 16


def _short_hex(text: str) -> str:
    return text if len(text) <= HEX_SHOWN else f"{text[:HEX_SHOWN]}... ({len(text) // 2} bytes)"


def _binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def hex_ready(table: pa.Table) -> pa.Table:
    """``table`` with every binary column as lowercase hexadecimal text (null stays null)."""
    names = [f.name for f in table.schema if _binary(f.type)]
    if not names:
        return table
    columns = [pa.array([None if v is None else v.hex() for v in column.to_pylist()], pa.string())
               if name in names else column for name, column in zip(table.column_names, table.columns)]
    return pa.Table.from_arrays(columns, names=table.column_names)


def _nested(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind) \
        or pa.types.is_struct(kind) or pa.types.is_map(kind)


def csv_ready(table: pa.Table) -> pa.Table:
    """``table`` with every list, struct and map column as JSON text (what ``--format json`` writes
    for that cell; null stays null): CSV has no nested values and pyarrow refuses to write them."""
    columns = []
    for column in table.columns:
        if _nested(column.type):
            texts = [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()]
            column = pa.array(texts, pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
