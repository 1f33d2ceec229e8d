"""`ood-ray query --format`: CSV with nested columns, JSON lines."""

from __future__ import annotations

import pyarrow as pa


def test_query_csv_writes_list_and_struct_columns_as_json():
    import csv as csvmodule
    import json

    from ood_ray.query import format_table

    table = pa.table({"id": [1, 2, 3], "top": [[3, 1], None, []], "p": [[0.5, 0.25], [1.0], None],
                      "s": [{"a": 1, "b": "x"}, None, {"a": 2, "b": None}]})
    rows = list(csvmodule.DictReader(format_table(table, "csv").splitlines()))
    assert [json.loads(r["top"]) if r["top"] else None for r in rows] == [[3, 1], None, []]
    assert json.loads(rows[0]["p"]) == [0.5, 0.25] and rows[2]["p"] == ""
    assert json.loads(rows[0]["s"]) == {"a": 1, "b": "x"} and json.loads(rows[2]["s"]) == {"a": 2, "b": None}
    json_lines = [json.loads(line) for line in format_table(table, "json").splitlines()]
    assert [r["top"] for r in json_lines] == [[3, 1], None, []]
