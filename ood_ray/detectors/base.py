"""The detector contract and the registry.

A detector turns features into a score, higher = more out-of-distribution, and does no I/O
(scikit-learn style, as DESIGN.md asks):

- ``name`` (class variable): the score's name; the column is ``score_<name>[_<model>]``.
- ``input`` (class variable): what ``X`` is -- ``"logits"`` ``(n, C)``, ``"member_probabilities"``
  ``(n, M, C)`` (the softmax of each of ``M`` ensemble members), ``"embeddings"`` ``(n, D)`` or
  ``"scores"`` ``(n, M)`` (other detectors' scores, for a fusion).
- ``requires_fit`` (class variable): whether :meth:`fit` must run before :meth:`score`.
- ``fit(X, y=None) -> self``; ``score(X) -> float32[n]``; ``state_dict()`` /
  ``from_state_dict(state)`` (JSON-able, so a fitted detector is saved with a run).

Thresholds and flags are not the detector's business: see :mod:`ood_ray.detectors.thresholds`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

#: Input kind -> the number of dimensions ``X`` must have.
INPUT_NDIM = {"logits": 2, "member_probabilities": 3, "embeddings": 2, "scores": 2}
INPUTS = tuple(INPUT_NDIM)


class NotFittedError(RuntimeError):
    """``score`` was called on a detector that needs ``fit`` first."""


class Detector:
    """Base class: stateless detectors need only ``_score``."""

    name: ClassVar[str]
    input: ClassVar[str]
    requires_fit: ClassVar[bool] = False

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> Detector:
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != INPUT_NDIM[self.input]:
            raise ValueError(f"{self.name}: {self.input} must be {INPUT_NDIM[self.input]}-D, got shape {X.shape}")
        return np.asarray(self._score(X), dtype=np.float32)

    def _score(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Detector:
        if state.get("name") != cls.name:
            raise ValueError(f"state of {state.get('name')!r} given to {cls.name!r}")
        return cls()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum for stability."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``-sum_c p_c ln p_c / ln C`` along the last axis (0 for one-hot, 1 for uniform)."""
    p = np.asarray(probabilities, dtype=np.float64)
    classes = p.shape[-1]
    log_p = np.zeros_like(p)
    np.log(p, out=log_p, where=p > 0)
    entropy = -(p * log_p).sum(axis=-1)
    return entropy / np.log(classes) if classes > 1 else np.zeros_like(entropy)


class Registry(dict):
    """Name -> detector class; registering a name twice is an error, not an overwrite."""

    def register(self, cls: type[Detector]) -> type[Detector]:
        if cls.name in self:
            raise ValueError(f"detector name {cls.name!r} is already registered by {self[cls.name].__name__}")
        if cls.input not in INPUTS:
            raise ValueError(f"detector {cls.name!r}: input must be one of {INPUTS}, got {cls.input!r}")
        self[cls.name] = cls
        return cls
