"""Energy score (Liu et al., NeurIPS 2020, "Energy-based Out-of-distribution Detection").

``score_energy = E(x) = -T * logsumexp(z / T)`` with ``T = 1``. The paper's free energy is already
higher for OOD inputs (it flags ``-E(x)`` below a threshold as OOD), so it is stored as is.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ood_ray.detectors.base import Detector


class Energy(Detector):
    name = "energy"
    input = "logits"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    @staticmethod
    def compute(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        return -temperature * logsumexp(z / temperature, axis=-1)

    def _score(self, X: np.ndarray) -> np.ndarray:
        return self.compute(X, self.temperature)

    def state_dict(self) -> dict:
        return {"name": self.name, "temperature": self.temperature}

    @classmethod
    def from_state_dict(cls, state: dict) -> Energy:
        super().from_state_dict(state)
        return cls(state.get("temperature", 1.0))
