"""Score fusion without OOD labels: each member score mapped to its empirical CDF on held-out
in-distribution reference rows, then combined.

For members ``s_1 .. s_M`` with held-out reference scores ``R_j`` (``n_j`` finite values each),
``F_j(x) = #{r in R_j : r <= x} / n_j`` (the right-continuous empirical CDF: the share of
reference images at most as anomalous), and

    score_fusion = mean_j F_j(s_j(x))      (``ood.fusion_method: mean``)
                 = max_j F_j(s_j(x))       (``max``)

over the members with a value for the image (none: null). Every member is on the same [0, 1]
scale whatever its units, so a distance, a feature-shaping and an output score can be averaged;
no OOD data is used. (Rank fusion of detector scores: cf. "ensemble of OOD detectors" by CDF /
p-value combination, e.g. Haroush et al., ICLR 2022; the reference CDFs are fitted on rows that the
fitted detectors did not see.) Higher = more OOD.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ood_ray.detectors.base import Detector, NotFittedError
from ood_ray.detectors.head import decode_array, encode_array

FUSION_METHODS = ("mean", "max")


class CDFFusion(Detector):
    name = "fusion"
    input = "scores"
    requires_fit = True

    def __init__(self, method: str = "mean") -> None:
        if method not in FUSION_METHODS:
            raise ValueError(f"fusion method {method!r}: one of {', '.join(FUSION_METHODS)}")
        self.method = method

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> CDFFusion:
        """``X``: ``(n, M)`` member scores of held-out reference rows (NaN: missing)."""
        X = np.asarray(X, dtype=np.float64)
        self.references_ = [np.sort(column[np.isfinite(column)]) for column in X.T]
        if any(len(r) == 0 for r in self.references_):
            raise ValueError("fusion: a member has no reference scores")
        return self

    def cdf(self, X: np.ndarray) -> np.ndarray:
        """``(n, M)`` empirical CDF values (NaN where the member score is missing)."""
        if not hasattr(self, "references_"):
            raise NotFittedError("fusion: call fit before score")
        X = np.asarray(X, dtype=np.float64)
        out = np.full(X.shape, np.nan)
        for j, reference in enumerate(self.references_):
            finite = np.isfinite(X[:, j])
            out[finite, j] = np.searchsorted(reference, X[finite, j], side="right") / len(reference)
        return out

    def _score(self, X: np.ndarray) -> np.ndarray:
        values = self.cdf(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing row is null, not a warning
            return np.nanmean(values, axis=1) if self.method == "mean" else np.nanmax(values, axis=1)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name, "method": self.method}
        if hasattr(self, "references_"):
            state["references"] = [encode_array(r) for r in self.references_]
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CDFFusion:
        super().from_state_dict(state)
        detector = cls(state.get("method", "mean"))
        if "references" in state:
            detector.references_ = [decode_array(r) for r in state["references"]]
        return detector
