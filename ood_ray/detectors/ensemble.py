"""Ensemble scores over ``M`` classifiers that share one class space.

- ``score_ensemble_entropy`` (OoDAnalyzer, Chen et al., IEEE TVCG 2020 / arXiv 2002.03103; the
  OoD Tool's "OoD score"; Lakshminarayanan et al., NeurIPS 2017): the entropy of the averaged
  distribution, ``H(mean_m p_m) / ln C``.
- ``score_mutual_information`` (BALD-style epistemic part; Depeweg et al., ICML 2018): the
  ensemble entropy minus the mean member entropy, ``H(mean_m p_m) - mean_m H(p_m)``, also divided
  by ``ln C``. Non-negative (Jensen); 0 when all members agree exactly.

Input: member probabilities ``(n, M, C)``.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.base import Detector, normalized_entropy


class EnsembleEntropy(Detector):
    name = "ensemble_entropy"
    input = "member_probabilities"

    @staticmethod
    def compute(member_probabilities: np.ndarray) -> np.ndarray:
        return normalized_entropy(np.asarray(member_probabilities, dtype=np.float64).mean(axis=1))

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self.compute(X)


class MutualInformation(Detector):
    name = "mutual_information"
    input = "member_probabilities"

    @staticmethod
    def compute(member_probabilities: np.ndarray) -> np.ndarray:
        p = np.asarray(member_probabilities, dtype=np.float64)
        value = normalized_entropy(p.mean(axis=1)) - normalized_entropy(p).mean(axis=1)
        return np.maximum(value, 0.0)  # rounding can dip a hair below zero

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self.compute(X)
