"""Extreme-value bounds from a metric's summary (DataEval's threshold rules).

A value ``x`` is flagged when ``x < lower`` or ``x > upper``:

- ``zscore`` (multiplier ``t = 3.0``): ``|x - mean| / std > t`` i.e. ``mean -/+ t std``
  (population std). No bounds when ``std <= 1e-12``. DataEval ``ZScoreThreshold``.
- ``modzscore`` (``t = 3.5``): ``0.6745 |x - median| / MAD > t`` i.e.
  ``median -/+ t MAD / 0.6745`` with ``MAD = median(|x - median|)``; when ``MAD <= 1e-12`` the
  mean absolute deviation from the median stands in; no bounds if that is also ``<= 1e-12``.
  Iglewicz & Hoaglin (1993); DataEval ``ModifiedZScoreThreshold``.
- ``adaptive`` (``t = 3.5``, the default): DataEval 1.1's ``AdaptiveThreshold`` (tail-weighted
  double MAD) -- the median ``m`` splits the values; each side ``s`` has its own
  ``MAD_s = median(|x - m|)`` over ``x <= m`` (left) or ``x >= m`` (right) and a tail factor
  ``f_s = 1 + log1p(max(0, (P90_s / MAD_s) / 1.91 - 1))`` (``P90_s``: the 90th percentile of those
  deviations; 1.91 is that ratio for normal data), and the bounds are
  ``m -/+ t f_s MAD_s / 0.6745``: a heavy or skewed tail widens only its own side. When both
  half-MADs are 0 (over half the values at the median) and more than 10 values differ from it,
  with the smallest of their deviations below ``meanAD / 0.6745`` (a smooth tail), the scale is
  the non-median values' own ``MAD / 0.6745`` times their tail factor; otherwise a zero half-MAD is
  replaced by the mean absolute deviation from the median (discrete jumps stay flagged). No bounds
  for fewer than 3 values or when that mean absolute deviation is 0.
- ``iqr`` (``t = 1.5``): outside ``[Q1 - t IQR, Q3 + t IQR]``, ``IQR = Q3 - Q1``. No bounds when
  ``IQR <= 1e-12``. Tukey (1977); DataEval ``IQRThreshold``. Quartiles here are linearly
  interpolated (DuckDB ``quantile_cont``, NumPy's default); DataEval uses NumPy's ``midpoint``
  method, which differs only when ``(n - 1) / 4`` is not an integer and then by less than one
  gap between neighbouring values.

The summaries come from one DuckDB aggregation over ``images`` (see :mod:`ood_ray.lint.linter`),
so these rules cost nothing per image and scale with the query engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPSILON = 1e-12
MODZ_CONSTANT = 0.6745
#: The 90th-percentile-to-MAD ratio of ``|X|`` for normal ``X`` (DataEval's ``_NORMAL_P90_MAD``).
NORMAL_P90_MAD = 1.91
#: Non-median values needed for the smooth-tail scale of the adaptive rule.
MIN_NON_MODE = 10


@dataclass(frozen=True)
class MetricSummary:
    """What the three methods need to know about one metric's values (nulls excluded)."""

    n: int
    mean: float
    std: float
    median: float
    mad: float
    mean_abs_dev: float
    q1: float
    q3: float
    #: the adaptive rule's half-MADs, their deviations' 90th percentiles, and the deviations of the
    #: values that differ from the median (count, smallest, median, 90th percentile)
    mad_left: float = 0.0
    mad_right: float = 0.0
    p90_left: float = 0.0
    p90_right: float = 0.0
    n_nonmode: int = 0
    nonmode_min: float = 0.0
    nonmode_mad: float = 0.0
    nonmode_p90: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> MetricSummary:
        """Summary of an in-memory array (NaN ignored); the distributed passes compute the same fields."""
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        median = float(np.median(v))
        deviation = np.abs(v - median)
        q1, q3 = np.percentile(v, [25, 75])
        left, right, nonmode = deviation[v <= median], deviation[v >= median], deviation[v != median]
        return cls(
            n=int(v.size), mean=float(v.mean()), std=float(v.std()), median=median,
            mad=float(np.median(deviation)), mean_abs_dev=float(deviation.mean()), q1=float(q1), q3=float(q3),
            mad_left=float(np.median(left)) if left.size else 0.0,
            mad_right=float(np.median(right)) if right.size else 0.0,
            p90_left=float(np.percentile(left, 90)) if left.size > 1 else 0.0,
            p90_right=float(np.percentile(right, 90)) if right.size > 1 else 0.0,
            n_nonmode=int(nonmode.size), nonmode_min=float(nonmode.min()) if nonmode.size else 0.0,
            nonmode_mad=float(np.median(nonmode)) if nonmode.size else 0.0,
            nonmode_p90=float(np.percentile(nonmode, 90)) if nonmode.size else 0.0,
        )


def tail_factor(mad: float, p90: float) -> float:
    """``1 + log1p(max(0, (P90 / MAD) / 1.91 - 1))``; 1 when ``MAD <= 1e-12``."""
    if mad <= EPSILON:
        return 1.0
    ratio = (p90 / mad) / NORMAL_P90_MAD
    return float(1.0 + np.log1p(max(0.0, ratio - 1.0)))


def _adaptive_bounds(s: MetricSummary, t: float) -> tuple[float, float] | None:
    """DataEval 1.1's ``AdaptiveThreshold._derive`` from the summary (see module docstring)."""
    if s.n < 3:
        return None
    mad_left, mad_right = s.mad_left, s.mad_right
    factor_left, factor_right = tail_factor(mad_left, s.p90_left), tail_factor(mad_right, s.p90_right)
    if mad_left <= EPSILON or mad_right <= EPSILON:
        if s.mean_abs_dev <= EPSILON:
            return None
        if mad_left <= EPSILON and mad_right <= EPSILON and s.n_nonmode > MIN_NON_MODE:
            gap_ratio = s.nonmode_min / (s.mean_abs_dev / MODZ_CONSTANT)
            if gap_ratio < 1.0 and s.nonmode_mad > EPSILON:
                scale = s.nonmode_mad / MODZ_CONSTANT * tail_factor(s.nonmode_mad, s.nonmode_p90)
                return s.median - t * scale, s.median + t * scale
        mad_left = mad_left if mad_left > EPSILON else s.mean_abs_dev
        mad_right = mad_right if mad_right > EPSILON else s.mean_abs_dev
    return (s.median - t * factor_left * (mad_left / MODZ_CONSTANT),
            s.median + t * factor_right * (mad_right / MODZ_CONSTANT))


def compute_bounds(summary: MetricSummary, method: str, multiplier: float) -> tuple[float, float] | None:
    """``(lower, upper)`` for ``method`` with ``multiplier``, or ``None`` when the spread is zero."""
    if summary.n == 0:
        return None
    if method == "adaptive":
        return _adaptive_bounds(summary, multiplier)
    if method == "zscore":
        if not summary.std > EPSILON:
            return None
        return summary.mean - multiplier * summary.std, summary.mean + multiplier * summary.std
    if method == "modzscore":
        scale = summary.mad if summary.mad > EPSILON else summary.mean_abs_dev
        if not scale > EPSILON:
            return None
        scale /= MODZ_CONSTANT
        return summary.median - multiplier * scale, summary.median + multiplier * scale
    if method == "iqr":
        iqr = summary.q3 - summary.q1
        if not iqr > EPSILON:
            return None
        return summary.q1 - multiplier * iqr, summary.q3 + multiplier * iqr
    raise ValueError(f"unknown lint method {method!r}")
