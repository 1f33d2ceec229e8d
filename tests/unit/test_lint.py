"""Lint thresholds: DataEval's rules as a peer, the mergeable summaries against NumPy on the whole
array for any split into parts, the flags."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ood_ray.config import ConfigError, load_config
from ood_ray.parts import LocalParts
from ood_ray.lint.linter import run_lint, summarize_metrics
from ood_ray.lint.summaries import ExactSum, float_keys, keys_to_floats
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


def _adaptive_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    smooth_tail = np.zeros(400)
    smooth_tail[:60] = rng.exponential(0.02, 60)  # over half at 0, a continuous tail beside it
    jumps = np.full(300, 3.0)
    jumps[:25] = [1.0] * 12 + [4.0] * 13  # over half at one value, the others a whole step away
    few_off = np.full(100, 0.5)
    few_off[:4] = [0.1, 0.2, 0.9, 0.95]  # 10 or fewer values off the mode: the tight fallback
    # the left half-MAD is 0 (most of the left half at the median), the right one is not
    one_side = np.concatenate([1 - rng.exponential(0.5, 200) - 0.01, np.full(250, 1.0), 1 + rng.exponential(0.5, 300)])
    return {"lognormal": np.concatenate([rng.lognormal(0, 0.5, 500), [15.0, 22.0, -3.0]]),
            "heavy_tails": rng.standard_t(2, 2000), "normal": rng.normal(5, 2, 1001), "smooth_tail": smooth_tail,
            "jumps": jumps, "few_off_the_mode": few_off, "one_side_flat": one_side, "three": np.array([1.0, 2.0, 7.0]),
            "constant": np.full(20, 0.4)}


@pytest.mark.parametrize("case", list(_adaptive_cases()))
@pytest.mark.parametrize("multiplier", [3.5, 2.0])
def test_adaptive_bounds_equal_dataeval_adaptive_threshold(case, multiplier):
    """Every branch of DataEval 1.1's tail-weighted double MAD: tails, both half-MADs zero with a
    smooth or a discrete tail, one half-MAD zero, a constant column."""
    thresholds = pytest.importorskip("dataeval.utils.thresholds")
    values = _adaptive_cases()[case]
    lower, upper = thresholds.AdaptiveThreshold(multiplier)(values)
    ours = compute_bounds(MetricSummary.of(values), "adaptive", multiplier)
    if lower is None:
        assert ours is None
    else:
        assert ours == pytest.approx((lower, upper), rel=1e-12)


@pytest.mark.parametrize("parts", [1, 3, 17])
def test_adaptive_summaries_equal_numpy_for_any_split_into_parts(parts):
    """The half-MADs, their 90th percentiles and the non-median deviations, found by the same
    distributed radix passes, are NumPy's to the bit; so the bounds are the in-memory ones."""
    cases = _adaptive_cases()
    n = max(len(v) for v in cases.values())
    columns = {name: np.concatenate([v, np.full(n - len(v), np.nan)]) for name, v in cases.items()}
    metrics = list(columns)
    got = summarize_metrics(_images(columns, ["a"] * n, parts, seed=parts), metrics, False, adaptive=True)
    for name, values in cases.items():
        expected = MetricSummary.of(values)
        for field in ("median", "mad", "q1", "q3", "mad_left", "mad_right", "p90_left", "p90_right", "n_nonmode",
                      "nonmode_min", "nonmode_mad", "nonmode_p90"):
            assert getattr(got[("all", name)], field) == getattr(expected, field), (name, field)
        bounds = compute_bounds(expected, "adaptive", 3.5)
        assert compute_bounds(got[("all", name)], "adaptive", 3.5) == (None if bounds is None else pytest.approx(bounds))


def test_adaptive_default_widens_only_the_heavy_side():
    """A right-skewed metric: the right bound moves out (tail factor > 1), the left stays at the
    plain modified z-score distance."""
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0, 1, 5000), rng.exponential(5, 1500) + 1])
    s = MetricSummary.of(values)
    lower, upper = compute_bounds(s, "adaptive", 3.5)
    assert upper - s.median > 2 * (s.median - lower)
    assert load_config(None, [], source="s", out="o").lint.method == "adaptive"


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


def _images(values: dict[str, np.ndarray], labels: list[str], parts: int = 1, status=None, seed: int = 0) -> LocalParts:
    """The rows as ``parts`` in-memory part files of random sizes (the rows shuffled first)."""
    n = len(labels)
    table = pa.table({"image_id": [f"id{i:03d}" for i in range(n)], "label": labels,
                      "status": status or ["ok"] * n, **values})
    rng = np.random.default_rng(seed)
    table = table.take(rng.permutation(n))
    cuts = np.sort(rng.integers(0, n + 1, parts - 1))
    bounds = [0, *cuts.tolist(), n]
    return LocalParts([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])])


def _exact_mean_std(values: np.ndarray) -> tuple[float, float]:
    mean = float(sum(map(Fraction, values.tolist())) / len(values))
    squares = sum(Fraction(float(d)) for d in (values - mean) ** 2)
    return mean, math.sqrt(float(squares / len(values)))


def _assert_equals_numpy(got: MetricSummary, values: np.ndarray) -> None:
    expected = MetricSummary.of(values)
    for field in ("n", "median", "mad", "q1", "q3"):
        assert getattr(got, field) == getattr(expected, field), field  # bit for bit
    mean, std = _exact_mean_std(values[~np.isnan(values)])
    assert (got.mean, got.std) == (mean, pytest.approx(std, rel=1e-15, abs=0))
    assert (got.mean, got.std, got.mean_abs_dev) == pytest.approx((expected.mean, expected.std, expected.mean_abs_dev),
                                                                   rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("parts", [1, 2, 7, 40])
def test_summaries_equal_numpy_per_class_for_any_split_into_parts(parts):
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 1001), rng.exponential(2, 1001)
    a[::17] = np.nan  # missing statistics are left out, as NumPy's nan-free arrays
    b[5:40] = 0.25  # ties across the middle
    labels = ["x" if i % 3 else "y" for i in range(1001)]
    status = ["ok" if i % 11 else "undecodable" for i in range(1001)]
    summaries = summarize_metrics(_images({"mean": a, "entropy": b}, labels, parts, status, seed=parts),
                                  ["mean", "entropy"], per_class=True)
    ok = np.array(status) == "ok"
    for scope in ("x", "y"):
        mask = ok & (np.array(labels) == scope)
        for name, values in (("mean", a), ("entropy", b)):
            _assert_equals_numpy(summaries[(scope, name)], values[mask])


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e300, max_value=1e300),
                       min_size=1, max_size=60),
       parts=st.integers(1, 6), seed=st.integers(0, 1000))
def test_summaries_equal_numpy_on_arbitrary_floats(values, parts, seed):
    """Negative zeros, subnormals, huge and tiny magnitudes together, duplicates, one value."""
    array = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = MetricSummary.of(array)
    got = summarize_metrics(_images({"mean": array}, ["a"] * len(array), parts, seed=seed), ["mean"], False)
    got = got[("all", "mean")]
    for field in ("n", "median", "mad", "q1", "q3"):
        assert getattr(got, field) == getattr(expected, field) or (
            math.isnan(getattr(expected, field)) and math.isnan(getattr(got, field))), field
    assert got.mean == float(sum(map(Fraction, values)) / len(values))
    # Two-pass std around a mean that is itself rounded: a mean off by delta moves the std by at
    # most delta, and NumPy's pairwise mean may be an ulp or two from the exact one (values with a
    # spread of a few ulps of their mean show it).
    slack = 4 * float(np.spacing(abs(got.mean))) if np.isfinite(got.mean) else 0.0
    assert got.std == pytest.approx(expected.std, rel=1e-12, abs=slack) or (math.isinf(got.std) and math.isinf(expected.std))


def test_exact_sum_is_exact_and_order_free():
    values = np.array([1e16, 1.0, -1e16, 3e-300, 2.0 ** -1074, -1.0, 0.5])
    total = ExactSum().add(values[:3]).merge(ExactSum().add(values[3:]))
    assert total.fraction() == sum(map(Fraction, values.tolist()))
    assert ExactSum.from_state(total.to_state()).fraction() == total.fraction()
    keys = float_keys(np.array([-np.inf, -2.0, -0.0, 0.0, 2.0 ** -1074, 1.0, np.inf]))
    assert np.all(np.diff(keys.astype(object)) > 0)  # sort order of the floats, -0.0 before 0.0
    assert keys_to_floats(keys).tolist() == [-np.inf, -2.0, -0.0, 0.0, 2.0 ** -1074, 1.0, np.inf]


def test_flags_are_exactly_the_values_outside_the_bounds():
    rng = np.random.default_rng(4)
    values = rng.normal(0.5, 0.05, 200)
    values[[7, 50]] = [0.95, 0.01]
    parts = _images({"mean": values, "std": np.full(200, 0.1)}, ["a"] * 200, parts=5)
    config = load_config(None, ["lint.metrics=mean,std", "lint.method=zscore"], source="s", out="o").lint
    flags, used = run_lint(parts, config)
    mean, std = values.mean(), values.std()
    expected = {f"id{i:03d}" for i in np.flatnonzero(np.abs(values - mean) > 3 * std)}
    assert {7, 50} <= {int(i[2:]) for i in expected}
    assert set(flags.column("image_id").to_pylist()) == expected
    assert used["std"]["all"]["skipped"] == "zero spread"
    assert used["mean"]["all"]["lower"] == pytest.approx(mean - 3 * std)
    assert set(flags.column("scope").to_pylist()) == {"all"}
    # severity: the z-score over the threshold, so the farthest flag ranks first
    by_id = {r["image_id"]: r["severity"] for r in flags.to_pylist()}
    for image_id, severity in by_id.items():
        assert severity == pytest.approx(abs(values[int(image_id[2:])] - mean) / std / 3) and severity > 1
    assert max(by_id, key=by_id.get) == f"id{int(np.argmax(np.abs(values - mean))):03d}"


def test_a_one_sided_metric_flags_only_its_tail():
    """``noise_ratio`` is flagged above its upper bound only by default (a low one is a smooth
    picture); ``lint.overrides.<metric>.side`` picks the tail for any metric, whatever else the
    overrides say, and ``run.json`` records it."""
    rng = np.random.default_rng(6)
    values = rng.normal(0.08, 0.01, 300)
    values[[3, 9]] = [0.9, 0.001]  # noise, and a picture smoother than any
    parts = _images({"noise_ratio": values, "mean": values[::-1].copy()}, ["a"] * 300, parts=4)

    def flagged(*overrides: str) -> tuple[dict[str, set[int]], dict]:
        config = load_config(None, ["lint.metrics=[noise_ratio, mean]", *overrides],
                             source="s", out="o").lint
        flags, used = run_lint(parts, config)
        found: dict[str, set[int]] = {}
        for row in flags.to_pylist():
            found.setdefault(row["metric"], set()).add(int(row["image_id"][2:]))
        return found, used

    found, used = flagged()
    assert found["noise_ratio"] == {3} and found["mean"] == {300 - 1 - 3, 300 - 1 - 9}
    assert used["noise_ratio"]["all"]["side"] == "upper" and used["mean"]["all"]["side"] == "both"
    found, _ = flagged("lint.overrides.mean.threshold=3")  # overriding another metric keeps the default side
    assert found["noise_ratio"] == {3}
    found, _ = flagged("lint.overrides.noise_ratio.side=both", "lint.overrides.mean.side=lower")
    assert found["noise_ratio"] == {3, 9} and found["mean"] == {300 - 1 - 9}
    with pytest.raises(ConfigError, match="lint.overrides.mean.side.*'top'"):
        flagged("lint.overrides.mean.side=top")


def test_per_class_thresholds_flag_within_each_class():
    """0.9 is ordinary in class 'bright' and extreme in class 'dark'."""
    rng = np.random.default_rng(5)
    dark = rng.normal(0.2, 0.02, 100)
    bright = rng.normal(0.9, 0.02, 100)
    dark[0] = 0.9
    con = _images({"mean": np.concatenate([dark, bright])}, ["dark"] * 100 + ["bright"] * 100, parts=3)
    global_config = load_config(None, ["lint.metrics=mean", "lint.method=modzscore"], source="s", out="o").lint
    per_class = load_config(None, ["lint.metrics=mean", "lint.method=modzscore", "lint.per_class=true"], source="s", out="o").lint
    assert "id000" not in run_lint(con, global_config)[0].column("image_id").to_pylist()
    flags, used = run_lint(con, per_class)
    assert "id000" in flags.column("image_id").to_pylist()
    assert set(used["mean"]) == {"dark", "bright"}
    assert flags.to_pylist()[0]["scope"] == "dark"
