"""Coalescing part files (:mod:`ood_ray.run.compact`): groups by bytes, every row once and in
order, differing column types unified, a table that cannot be unified kept as it was; the Parquet
encodings every part is written with."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from ood_ray.io import storage
from ood_ray.run.compact import ROW_GROUP_ROWS, merge_parts, plan_groups


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 500), min_size=1, max_size=60), target=st.integers(1, 2000))
def test_groups_keep_order_and_are_at_least_the_target_but_the_last(sizes, target):
    entries = [(f"u{i}", i) for i in range(len(sizes))]
    groups = plan_groups(entries, {f"u{i}": s for i, s in enumerate(sizes)}, target)
    assert [e for g in groups for e in g] == entries
    totals = [sum(sizes[i] for _, i in g) for g in groups]
    assert all(t >= target for t in totals[:-1])
    assert len(groups) <= math.ceil(sum(sizes) / target)
    # a group closes as soon as it reaches the target: without its last file it was below it
    assert all(t - sizes[g[-1][1]] < target for t, g in zip(totals, groups))


def _part(path, start, n, with_label=True):
    columns = {"image_id": [f"{i:08d}" for i in range(start, start + n)], "value": np.arange(start, start + n, dtype=np.float64)}
    # a part whose labels are all missing has a null-typed column, as a scan of unlabelled images writes
    columns["label"] = [f"c{i % 3}" for i in range(start, start + n)] if with_label else pa.nulls(n)
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_merge_streams_every_row_once_in_order_with_unified_types(tmp_path):
    uris = [_part(tmp_path / f"p{i}.parquet", i * 70_000, 70_000, with_label=i != 1) for i in range(4)]
    target = str(tmp_path / "out" / "merged.parquet")
    out = merge_parts(uris, target, storage.DEFAULT_RETRY)
    assert out == [(target, 280_000)]
    merged = pq.read_table(target)
    assert merged.column("image_id").to_pylist() == [f"{i:08d}" for i in range(280_000)]
    assert merged.schema.field("label").type == pa.string()
    labels = merged.column("label").to_pylist()
    assert labels[70_000:140_000] == [None] * 70_000 and labels[:3] == ["c0", "c1", "c2"]
    # row groups of ~ROW_GROUP_ROWS rows, not one per input part
    row_groups = pq.ParquetFile(target).metadata.num_row_groups
    assert row_groups == math.ceil(280_000 / (2 * 70_000)) and 2 * 70_000 >= ROW_GROUP_ROWS


def test_parts_whose_columns_cannot_be_unified_are_kept(tmp_path):
    a = _part(tmp_path / "a.parquet", 0, 10)
    b = str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"image_id": ["x"], "value": ["not a number"], "label": ["c"]}), b)
    target = tmp_path / "merged.parquet"
    assert merge_parts([a, b], str(target), storage.DEFAULT_RETRY) == [(a, 10), (b, 1)]
    assert not target.exists()


def test_only_string_columns_whose_values_repeat_get_a_parquet_dictionary(tmp_path):
    """Parts and coalesced parts encode repeating strings (statuses, labels) with a dictionary and
    unique ones (ids, hashes) and numbers plain; the values read back unchanged."""
    n = 64
    table = pa.table({"image_id": [f"id{i}" for i in range(n)], "status": ["ok"] * (n - 1) + ["missing"],
                      "label": [f"c{i % 3}" for i in range(n)], "half": [f"h{i // 2}" for i in range(n)],
                      "brightness": [i / n for i in range(n)]})
    assert storage.dictionary_columns(table) == ["status", "label", "half"]  # 32 distinct of 64: at the limit
    assert storage.dictionary_columns(table.slice(0, 0)) == []
    single = tmp_path / "single.parquet"
    storage.write_parquet(str(single), table)
    streamed = tmp_path / "streamed.parquet"
    assert storage.write_parquet_stream(str(streamed), table.schema, [table.slice(0, 40), table.slice(40)]) == n
    for path in (single, streamed):
        meta = pq.ParquetFile(path).metadata.row_group(0)
        encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
        assert {name for name, used in encodings.items() if "RLE_DICTIONARY" in used} == {"status", "label", "half"}, path
        assert pq.read_table(path).equals(table)


def test_a_lone_part_written_with_the_work_codec_is_rewritten_and_a_kept_one_stays(tmp_path):
    """Every committed file is zstd: the write tasks' lz4 parts are rewritten even when a part is
    alone in its group (a table's only part, or one of the target size), zstd ones are kept."""
    from ood_ray.run.compact import coalesce_table
    from ood_ray.run.layout import RunLayout

    layout = RunLayout(str(tmp_path), "r1")
    table = pa.table({"image_id": [f"{i:04d}" for i in range(300)], "value": np.arange(300, dtype=np.float64)})
    work = layout.write_part("images", "00000", table, compression=storage.WORK_COMPRESSION)
    kept = layout.write_part("channels", "00000", table)
    assert pq.read_metadata(work).row_group(0).column(0).compression == "LZ4"

    out, report = coalesce_table(layout, "images", [(work, 300)], 1 << 30, storage.DEFAULT_RETRY, local=True)
    assert len(out) == 1 and out[0][0] != work and out[0][1] == 300 and report["files_after"] == 1
    meta = pq.read_metadata(out[0][0])
    assert {meta.row_group(0).column(c).compression for c in range(meta.num_columns)} == {"ZSTD"}
    assert pq.read_table(out[0][0]).equals(table)

    assert coalesce_table(layout, "channels", [(kept, 300)], 1 << 30, storage.DEFAULT_RETRY, local=True)[0] == [(kept, 300)]
    # two zstd parts of the target size each: both kept as they are
    big = [layout.write_part("channels", f"0000{i}", table) for i in (1, 2)]
    assert coalesce_table(layout, "channels", [(u, 300) for u in big], 1, storage.DEFAULT_RETRY, local=True)[0] == \
        [(u, 300) for u in big]
