"""GEN, the generalized entropy score (Liu, Lochman & Zach, CVPR 2023, "GEN: Pushing the Limits of
Softmax-Based Out-of-Distribution Detection").

With ``p`` the softmax of the logits, clamped to ``[1e-7, 1 - 1e-7]``, and its ``M`` largest
entries (all when ``M >= C``):

    score_gen = (1 / M) sum_{j in top-M} p_j^gamma (1 - p_j)^gamma,   gamma = 0.1, M = 100

The paper scores ID confidence as ``-sum``; the mean (pytorch-ood 0.4's form) is the same ranking
for a fixed ``M`` and keeps the score on ``[0, 1]``. Higher = more uncertain = more OOD.
"""

from __future__ import annotations

import numpy as np

from ood_ray.detectors.base import Detector, softmax


class GEN(Detector):
    name = "gen"
    input = "logits"

    def __init__(self, gamma: float = 0.1, top: int = 100) -> None:
        self.gamma, self.top = float(gamma), int(top)

    def _score(self, X: np.ndarray) -> np.ndarray:
        p = np.clip(softmax(X), 1e-7, 1 - 1e-7)
        if self.top < p.shape[1]:
            p = -np.partition(-p, self.top - 1, axis=1)[:, : self.top]
        return (p ** self.gamma * (1 - p) ** self.gamma).mean(axis=1)

    def state_dict(self) -> dict:
        return {"name": self.name, "gamma": self.gamma, "top": self.top}

    @classmethod
    def from_state_dict(cls, state: dict) -> GEN:
        super().from_state_dict(state)
        return cls(state.get("gamma", 0.1), state.get("top", 100))
