"""The base of the detectors that use the classifier's last linear layer.

Many post-hoc OOD scores (ReAct, ASH, SCALE, fDBD, ViM, NNGuide) reshape or measure the
penultimate features ``z`` (the run's embeddings) and push them through the model's head
``logits = W z + b``. A :class:`HeadDetector` holds ``W`` (``C x D``) and ``b`` (``C``), given by
:meth:`with_head` -- in a run they come from timm's ``get_classifier()`` (a custom model: the same
method returning a ``torch.nn.Linear``; see ``ood_ray.embed.models.classifier_head``) -- and
stores them in its state with whatever it fitted, so a run can be scored with ``--reference``.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from ood_ray.detectors.base import Detector, NotFittedError


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A float64 array as JSON: shape and base64 of its little-endian bytes (a head of 1000 x 2048
    is 16 MB this way, against ~40 MB as a JSON list, and exact)."""
    array = np.ascontiguousarray(array, dtype="<f8")
    return {"shape": list(array.shape), "float64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(state: Any) -> np.ndarray:
    if isinstance(state, dict) and "float64" in state:
        return np.frombuffer(base64.b64decode(state["float64"]), dtype="<f8").reshape(state["shape"]).copy()
    return np.asarray(state, dtype=np.float64)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """``-logsumexp(logits)``: the free energy, higher = more OOD (Liu et al., NeurIPS 2020)."""
    return -logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


def kept_count(d: int, percentile: float) -> int:
    """``k = D - round(D * percentile)``: how many of ``D`` activations ASH keeps and SCALE sums
    (pytorch-ood's and the papers' top-k); an error when none."""
    k = d - int(np.round(d * percentile))
    if k <= 0:
        raise ValueError(f"percentile {percentile} keeps no activation of {d}")
    return k


def largest_sum(z: np.ndarray, percentile: float) -> np.ndarray:
    """Per row, the sum of its :func:`kept_count` largest values."""
    k = kept_count(z.shape[1], percentile)
    return -np.partition(-z, k - 1, axis=1)[:, :k].sum(axis=1)


class HeadDetector(Detector):
    """A detector over embeddings that needs the head ``(W, b)``; ``PARAMS`` are its
    hyperparameters, ``FITTED`` the arrays it fits (both saved in the state)."""

    input = "embeddings"
    PARAMS: ClassVar[tuple[str, ...]] = ()
    FITTED: ClassVar[tuple[str, ...]] = ()

    def with_head(self, weight: np.ndarray, bias: np.ndarray) -> HeadDetector:
        self.weight_ = np.asarray(weight, dtype=np.float64)
        self.bias_ = np.asarray(bias, dtype=np.float64).reshape(-1)
        if self.weight_.ndim != 2 or self.bias_.shape != (self.weight_.shape[0],):
            raise ValueError(f"{self.name}: head weight (C, D) and bias (C,), got {self.weight_.shape} and {self.bias_.shape}")
        return self

    def logits(self, z: np.ndarray) -> np.ndarray:
        self._check_head()
        return np.asarray(z, dtype=np.float64) @ self.weight_.T + self.bias_

    def _check_head(self) -> None:
        if not hasattr(self, "weight_"):
            raise NotFittedError(f"{self.name}: needs the classifier head (with_head)")

    def _check_fitted(self) -> None:
        self._check_head()
        missing = [name for name in self.FITTED if not hasattr(self, name + "_")]
        if missing:
            raise NotFittedError(f"{self.name}: call fit before score (missing {', '.join(missing)})")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name, **{p: getattr(self, p) for p in self.PARAMS}}
        for key in ("weight", "bias", *self.FITTED):
            if hasattr(self, key + "_"):
                value = getattr(self, key + "_")
                state[key] = encode_array(value) if isinstance(value, np.ndarray) else value
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> HeadDetector:
        Detector.from_state_dict.__func__(cls, state)
        detector = cls(**{p: state[p] for p in cls.PARAMS if p in state})
        if "weight" in state:
            detector.with_head(decode_array(state["weight"]), decode_array(state["bias"]))
        for key in cls.FITTED:
            if key in state:
                value = state[key]
                setattr(detector, key + "_", decode_array(value) if isinstance(value, (list, dict)) else value)
        return detector
