"""Samples drawn part by part (:mod:`ood_ray.sampling`) are exactly the rows of the one query over
the whole table -- bottom-k by a seeded hash, with and without a per-label cap -- for any split of
the rows into parts."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from ood_ray.sampling import Sampler, hash_order, sample_sql


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "image_id": [f"{i:032x}" for i in rng.permutation(n)],
        "status": rng.choice(["ok", "ok", "ok", "undecodable"], n).tolist(),
        "split": rng.choice(["train", "test"], n).tolist(),
        "label": rng.choice([f"c{k}" for k in range(7)], n, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02]).tolist(),
        "value": rng.normal(size=n),
    })


def _split(table: pa.Table, parts: int, seed: int) -> list[pa.Table]:
    cuts = sorted(np.random.default_rng(seed).integers(0, table.num_rows + 1, parts - 1).tolist())
    return [table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, table.num_rows])]


def _whole(table: pa.Table, sql: str) -> list[str]:
    con = duckdb.connect()
    con.register("images", table)
    return con.sql(sql).to_arrow_table().column("image_id").to_pylist()


@pytest.mark.parametrize("parts", [1, 3, 17])
@pytest.mark.parametrize("partition,cap,limit", [(None, None, 150), ("label", 40, 150), ("label", 500, 60)])
def test_sample_equals_the_query_over_the_whole_table(parts, partition, cap, limit):
    table = _table(3000, seed=parts)
    where, order = "status = 'ok' AND split = 'train'", hash_order("t1")
    got = Sampler.of_tables(_split(table, parts, parts)).select(["value", "label"], where, order, limit, partition, cap)
    expected = _whole(table, sample_sql(["image_id", "value", "label"], where, order, limit, partition, cap))
    assert got.column("image_id").to_pylist() == expected
    assert got.column_names == ["image_id", "value", "label"]
    assert len(expected) == limit
    if partition:
        counts = pa.table({"label": got.column("label")}).group_by("label").aggregate([("label", "count")])
        assert max(counts.column("label_count").to_pylist()) <= cap


def test_another_seed_is_another_sample_and_missing_columns_read_as_null():
    table = _table(2000)
    a = Sampler.of_tables([table]).select(["value"], "status = 'ok'", hash_order("a"), 100)
    b = Sampler.of_tables([table]).select(["value"], "status = 'ok'", hash_order("b"), 100)
    assert len(set(a.column("image_id").to_pylist()) & set(b.column("image_id").to_pylist())) < 30
    no_split = table.drop_columns(["split"])
    rows = Sampler.of_tables([no_split]).select(["value"], "status = 'ok' AND split IS NULL", hash_order("a"), 100)
    assert rows.column("image_id").to_pylist() == a.column("image_id").to_pylist()
