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


def test_binary_columns_are_hex_text_in_every_format():
    """``gray16`` is 256 bytes: CSV (pyarrow refuses non-UTF-8 text), JSON and the text table
    write binary cells as hexadecimal, which ``bytes.fromhex`` turns back into the same bytes."""
    import csv as csvmodule
    import json

    from ood_ray.query import format_table

    thumb = bytes(range(256))
    table = pa.table({"id": [1, 2], "gray16": pa.array([thumb, None], pa.binary(256)), "raw": pa.array([b"\xff\x00", b""], pa.binary())})
    rows = list(csvmodule.DictReader(format_table(table, "csv").splitlines()))
    assert bytes.fromhex(rows[0]["gray16"]) == thumb and rows[1]["gray16"] == "" and rows[0]["raw"] == "ff00"
    lines = [json.loads(line) for line in format_table(table, "json").splitlines()]
    assert bytes.fromhex(lines[0]["gray16"]) == thumb and lines[1]["gray16"] is None and lines[1]["raw"] == ""
    text = format_table(table, "table")
    assert "000102030405060708... (256 bytes)" not in text and "0001020304050607... (256 bytes)" in text and "ff00" in text
