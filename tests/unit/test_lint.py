"""Lint thresholds: DataEval's rules as a peer, the DuckDB summaries against NumPy, the flags."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from ood_ray.config import load_config
from ood_ray.lint.linter import run_lint, summarize_metrics
from ood_ray.lint.thresholds import MetricSummary, compute_bounds


@pytest.fixture(scope="module")
def skewed():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.lognormal(0, 0.5, 500), [15.0, 22.0, -3.0]])


@pytest.mark.parametrize("method,multiplier", [("zscore", 3.0), ("modzscore", 3.5), ("zscore", 2.0), ("modzscore", 1.0)])
def test_bounds_equal_dataeval_thresholds(skewed, method, multiplier):
    thresholds = pytest.importorskip("dataeval.utils.thresholds")
    peer = {"zscore": thresholds.ZScoreThreshold, "modzscore": thresholds.ModifiedZScoreThreshold}[method](multiplier)
    lower, upper = peer(skewed)
    ours = compute_bounds(MetricSummary.of(skewed), method, multiplier)
    assert ours == pytest.approx((lower, upper), rel=1e-12)


def test_iqr_bounds_are_tukey_fences_on_linear_quartiles(skewed):
    q1, q3 = np.percentile(skewed, [25, 75])
    assert compute_bounds(MetricSummary.of(skewed), "iqr", 1.5) == pytest.approx((q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)))


def test_zero_spread_gives_no_bounds_and_mad_falls_back_to_mean_deviation():
    constant = MetricSummary.of(np.full(50, 0.3))
    for method in ("zscore", "modzscore", "iqr"):
        assert compute_bounds(constant, method, 3.0) is None
    mostly_zero = np.zeros(100)
    mostly_zero[:3] = [0.4, 0.5, 0.9]  # MAD = 0 but the values do vary
    summary = MetricSummary.of(mostly_zero)
    assert summary.mad == 0
    lower, upper = compute_bounds(summary, "modzscore", 3.5)
    assert upper == pytest.approx(3.5 * mostly_zero.mean() / 0.6745)  # median 0, mean |x| = scale
    assert compute_bounds(summary, "iqr", 1.5) is None


def _images(values: dict[str, np.ndarray], labels: list[str]) -> duckdb.DuckDBPyConnection:
    n = len(labels)
    table = pa.table({"image_id": [f"id{i:03d}" for i in range(n)], "label": labels, "status": ["ok"] * n, **values})
    con = duckdb.connect()
    con.register("images", table)
    return con


def test_sql_summaries_equal_numpy_per_class():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 101), rng.exponential(2, 101)
    labels = ["x" if i % 3 else "y" for i in range(101)]
    con = _images({"mean": a, "entropy": b}, labels)
    summaries = summarize_metrics(con, ["mean", "entropy"], per_class=True)
    mask = np.array(labels) == "y"
    for name, values in (("mean", a), ("entropy", b)):
        expected = MetricSummary.of(values[mask])
        got = summaries[("y", name)]
        for field in ("n", "mean", "std", "median", "mad", "mean_abs_dev", "q1", "q3"):
            assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-9), field


def test_flags_are_exactly_the_values_outside_the_bounds():
    rng = np.random.default_rng(4)
    values = rng.normal(0.5, 0.05, 200)
    values[[7, 50]] = [0.95, 0.01]
    con = _images({"mean": values, "std": np.full(200, 0.1)}, ["a"] * 200)
    config = load_config(None, ["lint.metrics=mean,std"], source="s", out="o").lint
    flags, used = run_lint(con, config)
    mean, std = values.mean(), values.std()
    expected = {f"id{i:03d}" for i in np.flatnonzero(np.abs(values - mean) > 3 * std)}
    assert {7, 50} <= {int(i[2:]) for i in expected}
    assert set(flags.column("image_id").to_pylist()) == expected
    assert used["std"]["all"]["skipped"] == "zero spread"
    assert used["mean"]["all"]["lower"] == pytest.approx(mean - 3 * std)
    assert set(flags.column("scope").to_pylist()) == {"all"}


def test_per_class_thresholds_flag_within_each_class():
    """0.9 is ordinary in class 'bright' and extreme in class 'dark'."""
    rng = np.random.default_rng(5)
    dark = rng.normal(0.2, 0.02, 100)
    bright = rng.normal(0.9, 0.02, 100)
    dark[0] = 0.9
    con = _images({"mean": np.concatenate([dark, bright])}, ["dark"] * 100 + ["bright"] * 100)
    global_config = load_config(None, ["lint.metrics=mean", "lint.method=modzscore"], source="s", out="o").lint
    per_class = load_config(None, ["lint.metrics=mean", "lint.method=modzscore", "lint.per_class=true"], source="s", out="o").lint
    assert "id000" not in run_lint(con, global_config)[0].column("image_id").to_pylist()
    flags, used = run_lint(con, per_class)
    assert "id000" in flags.column("image_id").to_pylist()
    assert set(used["mean"]) == {"dark", "bright"}
    assert flags.to_pylist()[0]["scope"] == "dark"
