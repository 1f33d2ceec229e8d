"""OOD thresholds past ``ood.driver_quantile_max_rows`` (:mod:`ood_ray.score_quantiles`): the same
numbers as DuckDB's ``quantile_cont`` and NumPy's linear quantile over the whole column, to the bit,
for any split into parts, with NULLs, NaNs, ties and a SQL selection."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ood_ray.config import load_config
from ood_ray.ood_fit import score_thresholds
from ood_ray.parts import LocalParts
from ood_ray.sampling import Sampler
from ood_ray.score_quantiles import exact_quantiles


def _table(values: list[float | None], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(values)
    return pa.table({
        "image_id": [f"{i:032x}" for i in range(n)],
        "status": rng.choice(["ok", "ok", "ok", "undecodable"], n).tolist(),
        "split": rng.choice(["train", "test"], n).tolist(),
        "label": pa.nulls(n, pa.string()),
        "score_a": pa.array(values, pa.float64()),
        "score_b": pa.array(rng.integers(0, 5, n).astype(np.float32)),  # heavy ties, float32
    })


def _parts(table: pa.Table, parts: int, seed: int) -> LocalParts:
    cuts = sorted(np.random.default_rng(seed).integers(0, table.num_rows + 1, parts - 1).tolist())
    return LocalParts([table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, table.num_rows])])


WHERE = "status = 'ok' AND split = 'train'"


def _numpy(table: pa.Table, column: str, q: float) -> tuple[float, int] | None:
    con = duckdb.connect()
    con.register("images", table)
    values = con.sql(f'SELECT "{column}" FROM images WHERE {WHERE} AND "{column}" IS NOT NULL').fetchnumpy()[column]
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return (float(np.quantile(values, q)), len(values)) if len(values) else None


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False, width=64)), min_size=1,
                       max_size=80),
       parts=st.integers(1, 5), seed=st.integers(0, 99), q=st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]))
def test_exact_quantiles_equal_numpy_for_any_split(values, parts, seed, q):
    table = _table(values, seed)
    got = exact_quantiles(_parts(table, parts, seed), ["score_a", "score_b", "score_missing"], WHERE, q)
    for column in ("score_a", "score_b"):
        expected = _numpy(table, column, q)
        assert got.get(column) == expected, column
    assert "score_missing" not in got


@pytest.mark.parametrize("parts", [1, 4])
def test_thresholds_by_ray_tasks_equal_the_driver_query(parts):
    rng = np.random.default_rng(parts)
    values = rng.standard_t(3, 5000).tolist()
    for i in rng.choice(5000, 50, replace=False):
        values[i] = None if i % 2 else float("nan")
    table = _table(values, parts)
    con = duckdb.connect()
    con.register("images", table)
    sampler = Sampler(_parts(table, parts, parts))
    columns = ["score_a", "score_b"]
    on_driver = score_thresholds(con, sampler, columns, WHERE, load_config(None, [], source="s", out="o").ood)
    in_tasks = score_thresholds(con, sampler, columns, WHERE,
                                load_config(None, ["ood.driver_quantile_max_rows=0"], source="s", out="o").ood)
    assert in_tasks == on_driver
    assert on_driver["score_a"] == _numpy(table, "score_a", 0.95)
    assert on_driver["score_a"][1] < 5000  # NULLs, NaNs, other splits and statuses left out
