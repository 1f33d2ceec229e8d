"""Extreme-value bounds from a metric's summary (DataEval's threshold rules).

A value ``x`` is flagged when ``x < lower`` or ``x > upper``:

- ``zscore`` (multiplier ``t = 3.0``): ``|x - mean| / std > t`` i.e. ``mean -/+ t std``
  (population std). No bounds when ``std <= 1e-12``. DataEval ``ZScoreThreshold``.
- ``modzscore`` (``t = 3.5``): ``0.6745 |x - median| / MAD > t`` i.e.
  ``median -/+ t MAD / 0.6745`` with ``MAD = median(|x - median|)``; when ``MAD <= 1e-12`` the
  mean absolute deviation from the median stands in; no bounds if that is also ``<= 1e-12``.
  Iglewicz & Hoaglin (1993); DataEval ``ModifiedZScoreThreshold``.
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

    @classmethod
    def of(cls, values: np.ndarray) -> MetricSummary:
        """Summary of an in-memory array (NaN ignored); the SQL path computes the same fields."""
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        median = float(np.median(v))
        deviation = np.abs(v - median)
        q1, q3 = np.percentile(v, [25, 75])
        return cls(
            n=int(v.size), mean=float(v.mean()), std=float(v.std()), median=median,
            mad=float(np.median(deviation)), mean_abs_dev=float(deviation.mean()), q1=float(q1), q3=float(q3),
        )


def compute_bounds(summary: MetricSummary, method: str, multiplier: float) -> tuple[float, float] | None:
    """``(lower, upper)`` for ``method`` with ``multiplier``, or ``None`` when the spread is zero."""
    if summary.n == 0:
        return None
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
