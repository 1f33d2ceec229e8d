"""Thresholds: from a score to a flag, kept apart from the detectors.

:class:`QuantileThreshold` takes the ``q`` quantile of the scores of the reference set (default
0.95: 95% of reference images are in distribution) and flags ``score > threshold``. The fitted
value is recorded in ``run.json`` so the flag can be explained and reproduced.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class QuantileThreshold:
    """``threshold_ = quantile(reference_scores, q)``; ``flag = score > threshold_``."""

    def __init__(self, quantile: float = 0.95) -> None:
        self.quantile = quantile

    def fit(self, reference_scores: np.ndarray) -> QuantileThreshold:
        values = np.asarray(reference_scores, dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            raise ValueError("QuantileThreshold: no reference scores to fit on")
        self.threshold_ = float(np.quantile(values, self.quantile))
        self.n_ = int(values.size)
        return self

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) > self.threshold_

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "quantile", "quantile": self.quantile, "threshold": self.threshold_, "n_reference": self.n_}
